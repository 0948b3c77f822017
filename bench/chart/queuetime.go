package main

import (
	"encoding/csv"
	"fmt"
	"image/color"
	"os"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// The queue-time chart reads the queue-time.csv of bench/report
// (seconds,series,wait_s): notifyd's reported oldest age, drawn as a line,
// and each client request's own wait at the moment it ended, as dots.
var (
	notifydColor = color.NRGBA{R: 30, G: 100, B: 200, A: 255}
	clientColor  = color.NRGBA{R: 210, G: 30, B: 40, A: 150}
)

// renderQueueTime reads the CSV at in and writes the chart to out.
func renderQueueTime(in, out string) error {
	f, err := os.Open(in)
	if err != nil {
		return fmt.Errorf("open samples: %w", err)
	}
	rows, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil {
		return fmt.Errorf("read samples %s: %w", in, err)
	}
	want := []string{"seconds", "series", "wait_s"}
	if len(rows) < 2 || !slices.Equal(rows[0], want) {
		return fmt.Errorf("%s: want a header %v and at least one sample", in, want)
	}
	var reported, clients plotter.XYs
	for i, r := range rows[1:] {
		secs, err1 := strconv.ParseFloat(r[0], 64)
		wait, err2 := strconv.ParseFloat(r[2], 64)
		if err1 != nil || err2 != nil || secs < 0 || wait < 0 {
			return fmt.Errorf("%s line %d: want seconds and a wait, numbers >= 0", in, i+2)
		}
		switch r[1] {
		case "notifyd":
			reported = append(reported, plotter.XY{X: secs, Y: wait})
		case "client":
			clients = append(clients, plotter.XY{X: secs, Y: wait})
		default:
			return fmt.Errorf("%s line %d: unknown series %q", in, i+2, r[1])
		}
	}
	if len(reported) == 0 || len(clients) == 0 {
		return fmt.Errorf("%s: want samples of both notifyd and the client", in)
	}

	p := plot.New()
	p.Title.Text = "Queue time: notifyd's reading against the clients' own wait"
	p.X.Label.Text = "time since the ramp started (s)"
	p.Y.Label.Text = "wait for a worker (s)"
	p.X.Min, p.Y.Min = 0, 0
	p.X.Tick.Marker = steps{}
	p.Y.Tick.Marker = steps{}
	p.Add(plotter.NewGrid())
	dots, err := plotter.NewScatter(clients)
	if err != nil {
		return err
	}
	dots.GlyphStyle = draw.GlyphStyle{Color: clientColor, Radius: vg.Points(1.6), Shape: draw.CircleGlyph{}}
	line, err := plotter.NewLine(reported)
	if err != nil {
		return err
	}
	line.LineStyle = draw.LineStyle{Color: notifydColor, Width: vg.Points(1.2)}
	p.Add(dots, line)
	leg := plot.NewLegend()
	leg.Top, leg.Left = true, true
	leg.Add("notifyd: oldest_seconds", line)
	leg.Add("client: its own wait, at its end", dots)
	return save(p, leg, out)
}
