package main

import "testing"

func TestParseWrk(t *testing.T) {
	const head = "Running 3s test @ http://127.0.0.1:8001/\n" +
		"  1 threads and 8 connections\n" +
		"  Thread Stats   Avg      Stdev     Max   +/- Stdev\n" +
		"    Latency     1.71ms    1.16ms  18.61ms   84.41%\n" +
		"    Req/Sec     3.42k     0.91k    5.19k    73.33%\n" +
		"  10205 requests in 3.00s, 1.67MB read\n"
	const tail = "Requests/sec:   3398.68\nTransfer/sec:    570.88KB\n"
	cases := []struct {
		name     string
		out      string
		want     wrkResult
		parseErr string
		checkErr string
	}{
		{
			name: "clean",
			out:  head + tail,
			want: wrkResult{requests: 10205, rate: 3398.68},
		},
		{
			name:     "socket errors",
			out:      head + "  Socket errors: connect 1, read 2, write 3, timeout 4\n" + tail,
			want:     wrkResult{requests: 10205, rate: 3398.68, connect: 1, read: 2, write: 3, timeout: 4},
			checkErr: "socket errors: connect 1, read 2, write 3, timeout 4",
		},
		{
			name:     "non-2xx answers",
			out:      head + "  Non-2xx or 3xx responses: 12\n" + tail,
			want:     wrkResult{requests: 10205, rate: 3398.68, non2xx: 12},
			checkErr: "12 answers were not 2xx or 3xx",
		},
		{
			name:     "no request",
			out:      "Running 1s test @ http://127.0.0.1:8001/\n  0 requests in 1.00s, 0.00B read\nRequests/sec:      0.00\n",
			want:     wrkResult{},
			checkErr: "no request completed",
		},
		{
			name:     "no rate",
			out:      head,
			parseErr: `no "Requests/sec:" line in wrk's output`,
		},
		{
			name:     "no request count",
			out:      tail,
			parseErr: `no "N requests in" line in wrk's output`,
		},
		{
			name:     "unreadable socket errors",
			out:      head + "  Socket errors: connect 1, read 2\n" + tail,
			parseErr: `unreadable "Socket errors" line in wrk's output`,
		},
		{
			name:     "unreadable non-2xx",
			out:      head + "  Non-2xx or 3xx responses: many\n" + tail,
			parseErr: `unreadable "Non-2xx or 3xx responses" line in wrk's output`,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseWrk(c.out)
			if c.parseErr != "" {
				if err == nil || err.Error() != c.parseErr {
					t.Fatalf("parseWrk error = %v, want %q", err, c.parseErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseWrk: %v", err)
			}
			if got != c.want {
				t.Errorf("parseWrk = %+v, want %+v", got, c.want)
			}
			err = got.check()
			switch {
			case c.checkErr == "" && err != nil:
				t.Errorf("check: %v, want nil", err)
			case c.checkErr != "" && (err == nil || err.Error() != c.checkErr):
				t.Errorf("check = %v, want %q", err, c.checkErr)
			}
		})
	}
}
