package benchkit

import (
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	cases := []struct {
		name string
		got  float64
		want float64
	}{
		{"none", Median([]float64{}), 0},
		{"odd", Median([]float64{3, 1, 2}), 2},
		{"even, mean of the middle two", Median([]int{4, 1, 3, 2}), 2.5},
		{"durations", Median([]time.Duration{3 * time.Millisecond, time.Millisecond}), float64(2 * time.Millisecond)},
		{"queue lengths", Median([]uint32{148, 254, 0}), 148},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.got != c.want {
				t.Errorf("Median = %v, want %v", c.got, c.want)
			}
		})
	}
}

func TestNearestRank(t *testing.T) {
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	cases := []struct {
		name   string
		sorted []int
		q      float64
		want   int
		ok     bool
	}{
		{"none", nil, 0.5, 0, false},
		{"one", []int{7}, 0.99, 7, true},
		{"p50 of 100", hundred, 0.50, 50, true},
		{"p99 of 100", hundred, 0.99, 99, true},
		{"p99 of 10 is the max", hundred[:10], 0.99, 10, true},
		{"max", hundred, 1, 100, true},
		{"tiny q is the min", hundred, 0.001, 1, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, ok := NearestRank(c.sorted, c.q)
			if got != c.want || ok != c.ok {
				t.Errorf("NearestRank(%v) = %d, %t, want %d, %t", c.q, got, ok, c.want, c.ok)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	cases := []struct {
		name, got, want string
	}{
		{"microseconds", FormatDuration(850 * time.Microsecond), "850.0 µs"},
		{"milliseconds", FormatDuration(1410 * time.Microsecond), "1.41 ms"},
		{"seconds", FormatDuration(1250 * time.Millisecond), "1.250 s"},
		{"whole seconds", FormatSeconds(time.Minute), "60 s"},
		{"part of a second", FormatSeconds(250 * time.Millisecond), "0.25 s"},
		{"small ratio", FormatRatio(6.9712), "6.97×"},
		{"large ratio", FormatRatio(250.4), "250×"},
		{"whole count", FormatCount(148), "148"},
		{"half count", FormatCount(148.5), "148.5"},
		{"rates", FormatRates([]float64{23074.4, 22800.6}), "23074, 22801"},
		{"no rates", FormatRates(nil), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.got != c.want {
				t.Errorf("got %q, want %q", c.got, c.want)
			}
		})
	}
}

func TestWriteGoals(t *testing.T) {
	var b strings.Builder
	WriteGoals(&b, []Goal{
		{What: "p99 < 1.00 ms", Result: "p99 0.40 ms", Met: true},
		{What: "ratio >= 0.95", Result: "0.899", Met: false},
	})
	const want = "\n## Goals\n\n" +
		"| goal | result | verdict |\n| --- | --- | --- |\n" +
		"| p99 < 1.00 ms | p99 0.40 ms | met |\n" +
		"| ratio >= 0.95 | 0.899 | **not met** |\n"
	if b.String() != want {
		t.Errorf("WriteGoals wrote\n%s\nwant\n%s", b.String(), want)
	}
}
