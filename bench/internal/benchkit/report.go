package benchkit

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Goal is one row of the Goals table that closes a report: the goal, what
// was measured against it, and whether it was met.
type Goal struct {
	What   string // the goal: "pidfd death detection p99 < 1.00 ms"
	Result string // the numbers that judge it: "p99 0.40 ms, of which the kernel's p99 is 0.21 ms"
	Met    bool
}

// WriteGoals writes the Goals section that closes a report: one row per
// goal, a missed one in bold.
func WriteGoals(w io.Writer, goals []Goal) {
	fmt.Fprint(w, "\n## Goals\n\n")
	fmt.Fprint(w, "| goal | result | verdict |\n| --- | --- | --- |\n")
	for _, g := range goals {
		verdict := "**not met**"
		if g.Met {
			verdict = "met"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", g.What, g.Result, verdict)
	}
}

// Median is the median of xs, the mean of the middle two for an even count,
// and 0 for none.
func Median[T ~int | ~int64 | ~uint32 | ~float64](xs []T) float64 {
	s := make([]float64, len(xs))
	for i, x := range xs {
		s[i] = float64(x)
	}
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// NearestRank is the nearest-rank q quantile of sorted, 0 < q <= 1: the
// smallest value that at least q of the values do not exceed. It reports
// false when sorted is empty.
func NearestRank[T any](sorted []T, q float64) (T, bool) {
	if len(sorted) == 0 {
		var zero T
		return zero, false
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))], true
}

// Millis is d in milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// FormatDuration writes a measured duration with a unit that suits it:
// "850.0 µs", "1.41 ms", "1.250 s".
func FormatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2f ms", Millis(d))
	default:
		return fmt.Sprintf("%.3f s", d.Seconds())
	}
}

// FormatSeconds writes a duration in seconds, with no more digits than it
// needs: "60 s", "0.5 s".
func FormatSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + " s"
}

// FormatRatio writes a ratio as a factor: "6.97×", "250×".
func FormatRatio(r float64) string {
	if r >= 100 {
		return fmt.Sprintf("%.0f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// FormatCount writes a count, or a median of counts, which may end in .5:
// "148", "148.5".
func FormatCount(x float64) string {
	if x == math.Trunc(x) {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.1f", x)
}

// FormatRates writes the rates of every round, in the order they were
// measured: "23074, 22800, 23511".
func FormatRates(rs []float64) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%.0f", r)
	}
	return strings.Join(parts, ", ")
}
