// Package benchkit is what the benchmark programs under bench/ have in
// common, so that bench/liveness and bench/saturation measure, clean up and
// report in one way.
//
// A benchmark program uses it in four places:
//
//   - its command line: Main runs it with a context that SIGINT and SIGTERM
//     end, ParseFlags and CheckRange read and bound its flags, ShellWords
//     writes its command back for the report, StepError names the step a run
//     failed in;
//   - its lab: a Lab owns the temporary directory, the notifyd binary that
//     BuildNotifyd makes from the repository ModuleRoot finds, and every
//     process started with Start, so that Close can stop and reap all of them
//     on every path out, an error or SIGINT included;
//   - the description of the machine that opens each report (DescribeMachine);
//   - the numbers of the report: Median, NearestRank, the Format functions,
//     and the Goals table that closes it (WriteGoals).
//
// Quantiles are nearest-rank: the q quantile of n values is the smallest
// value that at least q·n of them do not exceed, so that a reported p99 is
// always a value that was measured.
package benchkit
