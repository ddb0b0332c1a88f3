//go:build race

package train

// raceEnabled: the race detector multiplies memory, so memory measurements
// run in a child built without it.
const raceEnabled = true
