// Package backoff says how long to wait before trying again what failed.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Jittered is the wait after failures consecutive failures: exponential
// from lo, capped at hi, with its upper half random, so that many
// failing together do not try again together.
func Jittered(failures int, lo, hi time.Duration) time.Duration {
	d := hi
	if shift := failures - 1; shift < 30 && lo<<shift < hi {
		d = lo << shift
	}
	return d/2 + rand.N(d/2+1)
}
