// Package main draws the chart of the saturation benchmark: the latency of
// every health-check request over time, one colour per endpoint, on a
// logarithmic axis, with the requests that failed or timed out drawn as
// crosses at the timeout.
//
// It reads the saturation.csv that go run ./bench/report writes
// (seconds,target,latency_ms,outcome) and writes a PNG of about 900x450
// pixels. From the repository root:
//
//	(cd bench/chart && go run . -in ../../docs/saturation.csv -out ../../docs/saturation.png)
//
// With -queue-time it draws the queue-time chart instead, from the
// queue-time.csv bench/report writes (seconds,series,wait_s):
//
//	(cd bench/chart && go run . -queue-time -in queue-time.csv -out ../../docs/queue-time.png)
//
// This is a module of its own, so that the plotting library stays out of
// notifyd's dependencies.
package main

import (
	"cmp"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

func main() {
	err := run(os.Args[1:], os.Stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	default:
		fmt.Fprintln(os.Stderr, "chart:", err)
		os.Exit(1)
	}
}

// Size of the picture, in pixels at vgimg's resolution.
const (
	widthPx  = 900
	heightPx = 450
	legendPx = 250 // the strip on the right that holds the legend
	dpi      = vgimg.DefaultDPI
)

// style is how one target of the benchmark is drawn.
type style struct {
	target, label string
	color         color.NRGBA
	layer         int // drawing order: the highest is drawn last, on top
}

// series are the targets the benchmark probes, in the legend's order.
var series = []style{
	{"app", "(a) application route /", color.NRGBA{R: 210, G: 30, B: 40, A: 170}, 3},
	{"seed", "(b) seed-style server", color.NRGBA{R: 230, G: 120, B: 20, A: 170}, 1},
	{"notifyd", "(c) notifyd", color.NRGBA{R: 30, G: 100, B: 200, A: 170}, 2},
	{"bare", "floor: bare server", color.NRGBA{R: 140, G: 140, B: 140, A: 170}, 0},
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("chart", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "CSV written by go run ./bench/report (saturation.csv)")
	out := fs.String("out", "saturation.png", "PNG to write")
	timeout := fs.Duration("timeout", time.Second, "the probes' timeout, where failures are drawn (bench/report's probe timeout)")
	queueTime := fs.Bool("queue-time", false, "draw the queue-time chart from queue-time.csv instead")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *queueTime && *in != "" && fs.NArg() == 0 {
		return renderQueueTime(*in, *out)
	}
	switch {
	case *in == "" || fs.NArg() > 0:
		return errors.New("usage: chart -in samples.csv [-out saturation.png] [-timeout 1s]")
	case *timeout <= 0:
		return fmt.Errorf("-timeout %s: must be positive", *timeout)
	}
	samples, err := readSamples(*in)
	if err != nil {
		return err
	}
	return render(samples, ms(*timeout), *out)
}

// sample is one line of the CSV.
type sample struct {
	seconds, latencyMs float64
	target             string
	ok                 bool // answered 200
}

// readSamples reads the CSV, checking its header and every value.
func readSamples(path string) ([]sample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open samples: %w", err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("read samples %s: %w", path, err)
	}
	want := []string{"seconds", "target", "latency_ms", "outcome"}
	if len(rows) < 2 || !slices.Equal(rows[0], want) {
		return nil, fmt.Errorf("%s: want a header %v and at least one sample", path, want)
	}
	out := make([]sample, 0, len(rows)-1)
	for i, r := range rows[1:] {
		s, err := parseSample(r)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, i+2, err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseSample(r []string) (sample, error) {
	secs, err := strconv.ParseFloat(r[0], 64)
	if err != nil || secs < 0 {
		return sample{}, fmt.Errorf("seconds %q: not a number >= 0", r[0])
	}
	lat, err := strconv.ParseFloat(r[2], 64)
	if err != nil || lat <= 0 {
		return sample{}, fmt.Errorf("latency_ms %q: not a number > 0", r[2])
	}
	if !slices.ContainsFunc(series, func(s style) bool { return s.target == r[1] }) {
		return sample{}, fmt.Errorf("unknown target %q", r[1])
	}
	return sample{seconds: secs, latencyMs: lat, target: r[1], ok: r[3] == "200"}, nil
}

// render draws the samples and writes the PNG to path.
func render(samples []sample, timeoutMs float64, path string) error {
	p := plot.New()
	p.Title.Text = "Health-check latency while every gunicorn worker is busy"
	p.X.Label.Text = "time since probing started (s)"
	p.Y.Label.Text = "latency (ms, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = decades{}
	p.Y.Min = math.Pow10(int(math.Floor(math.Log10(fastest(samples)))))
	p.Y.Max = timeoutMs * 2
	p.X.Min = 0
	p.X.Tick.Marker = steps{}
	p.Add(plotter.NewGrid())

	thumbs := make(map[string][]plot.Thumbnailer)
	labels := make(map[string]string)
	for _, st := range slices.SortedFunc(slices.Values(series), func(a, b style) int { return cmp.Compare(a.layer, b.layer) }) {
		answered, failed := split(samples, st.target, timeoutMs)
		if len(answered)+len(failed) == 0 {
			continue
		}
		var err error
		if thumbs[st.target], err = addPoints(p, st, answered, failed); err != nil {
			return err
		}
		labels[st.target] = st.label
		if len(failed) > 0 {
			labels[st.target] += fmt.Sprintf(": %d of %d failed", len(failed), len(answered)+len(failed))
		}
	}
	leg := plot.NewLegend()
	leg.Top, leg.Left = true, true
	for _, st := range series {
		if t, ok := thumbs[st.target]; ok {
			leg.Add(labels[st.target], t...)
		}
	}
	addLine(p, &leg, timeoutMs, "timeout: failures drawn as ×", color.NRGBA{A: 255}, []vg.Length{vg.Points(4), vg.Points(3)})
	return save(p, leg, path)
}

// split returns one target's answered samples and its failed ones, the
// failures placed at the timeout.
func split(samples []sample, target string, timeoutMs float64) (answered, failed plotter.XYs) {
	for _, s := range samples {
		switch {
		case s.target != target:
		case s.ok:
			answered = append(answered, plotter.XY{X: s.seconds, Y: s.latencyMs})
		default:
			failed = append(failed, plotter.XY{X: s.seconds, Y: timeoutMs})
		}
	}
	return answered, failed
}

// addPoints draws one target's answered samples as dots and its failed ones
// as crosses, and returns what its legend entry shows.
func addPoints(p *plot.Plot, st style, answered, failed plotter.XYs) ([]plot.Thumbnailer, error) {
	var thumbs []plot.Thumbnailer
	for _, set := range []struct {
		xys   plotter.XYs
		glyph draw.GlyphStyle
	}{
		{answered, draw.GlyphStyle{Color: st.color, Radius: vg.Points(1.2), Shape: draw.CircleGlyph{}}},
		{failed, draw.GlyphStyle{Color: st.color, Radius: vg.Points(3), Shape: draw.CrossGlyph{}}},
	} {
		if len(set.xys) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(set.xys)
		if err != nil {
			return nil, fmt.Errorf("plot %s: %w", st.label, err)
		}
		sc.GlyphStyle = set.glyph
		p.Add(sc)
		thumbs = append(thumbs, sc)
	}
	return thumbs, nil
}

// addLine draws a horizontal reference line at y.
func addLine(p *plot.Plot, leg *plot.Legend, y float64, label string, c color.NRGBA, dashes []vg.Length) {
	f := plotter.NewFunction(func(float64) float64 { return y })
	f.LineStyle = draw.LineStyle{Color: c, Width: vg.Points(1), Dashes: dashes}
	p.Add(f)
	leg.Add(label, f)
}

// save draws the plot on the left and the legend in a strip on the right,
// where it hides no point, and writes the PNG.
func save(p *plot.Plot, leg plot.Legend, path string) error {
	px := func(n int) vg.Length { return vg.Length(n) * vg.Inch / dpi }
	img := vgimg.NewWith(vgimg.UseWH(px(widthPx), px(heightPx)), vgimg.UseDPI(dpi))
	dc := draw.New(img)
	p.Draw(draw.Crop(dc, 0, -px(legendPx), 0, 0))
	leg.TextStyle.Font.Size = vg.Points(9)
	leg.Draw(draw.Crop(dc, px(widthPx-legendPx+10), 0, 0, -px(40)))

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	_, err = vgimg.PngCanvas{Canvas: img}.WriteTo(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// fastest is the lowest latency of an answered request, or 0.1 ms if none
// was answered.
func fastest(samples []sample) float64 {
	low := math.Inf(1)
	for _, s := range samples {
		if s.ok {
			low = min(low, s.latencyMs)
		}
	}
	if math.IsInf(low, 1) {
		return 0.1
	}
	return low
}

// decades marks every power of ten with a label and the steps between with
// ticks. plot.LogTicks can lose the lowest label to rounding in Log10.
type decades struct{}

func (decades) Ticks(low, high float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(low)); e <= math.Ceil(math.Log10(high)); e++ {
		decade := math.Pow10(int(e))
		ticks = append(ticks, plot.Tick{Value: decade, Label: strconv.FormatFloat(decade, 'f', -1, 64)})
		for i := 2.0; i < 10; i++ {
			ticks = append(ticks, plot.Tick{Value: decade * i})
		}
	}
	return ticks
}

// steps marks a linear axis at round intervals, 1, 2 or 5 times a power of
// ten, about eight of them.
type steps struct{}

func (steps) Ticks(low, high float64) []plot.Tick {
	raw := (high - low) / 8
	if raw <= 0 {
		return []plot.Tick{{Value: low, Label: strconv.FormatFloat(low, 'f', -1, 64)}}
	}
	base := math.Pow10(int(math.Floor(math.Log10(raw))))
	step := base * 10
	for _, m := range []float64{1, 2, 5} {
		if base*m >= raw {
			step = base * m
			break
		}
	}
	var ticks []plot.Tick
	for i := math.Ceil(low / step); i*step <= high; i++ {
		v := i * step
		ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
	}
	return ticks
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
