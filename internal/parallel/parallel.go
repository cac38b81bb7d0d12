// Package parallel runs a loop's iterations on every processor: a start
// with many accounts opens, decodes and caches each of them, and that is
// most of the start's work.
package parallel

import (
	"runtime"

	"golang.org/x/sync/errgroup"
)

// run is how many iterations one goroutine takes at a time.
const run = 256

// Each calls fn for 0..n-1, runs of indexes at once on every processor,
// and returns the first error (the other runs then stop at their next).
func Each(n int, fn func(i int) error) error {
	runOf := func(from int) error {
		for i := from; i < min(from+run, n); i++ {
			if err := fn(i); err != nil {
				return err
			}
		}
		return nil
	}
	if n <= run { // one run (a page of a listing): no goroutine
		return runOf(0)
	}
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	for from := 0; from < n; from += run {
		g.Go(func() error { return runOf(from) })
	}
	return g.Wait()
}
