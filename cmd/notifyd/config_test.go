package main

import "testing"

func TestParseWeight(t *testing.T) {
	tests := []struct {
		in          string
		idle, queue bool
		bad         bool
	}{
		{in: "capacity"},
		{in: "idle", idle: true},
		{in: "queue", queue: true},
		{in: "idle,queue", idle: true, queue: true},
		{in: "queue,idle", idle: true, queue: true},
		{in: "", bad: true},
		{in: "busy", bad: true},
		{in: "idle,idle", bad: true},
		{in: "capacity,idle", bad: true},
		{in: "idle,", bad: true},
		{in: "idle, queue", bad: true},
		{in: "IDLE", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			idle, queue, err := parseWeight(tt.in)
			if tt.bad {
				if err == nil || err.Error() != "must be capacity, idle, queue, or idle,queue" {
					t.Fatalf("parseWeight(%q) = %v, %v, %v; want the error", tt.in, idle, queue, err)
				}
				return
			}
			if err != nil || idle != tt.idle || queue != tt.queue {
				t.Fatalf("parseWeight(%q) = %v, %v, %v; want %v, %v, nil", tt.in, idle, queue, err, tt.idle, tt.queue)
			}
		})
	}
}
