package parallel

import (
	"errors"
	"sync/atomic"
	"testing"
)

func TestEach(t *testing.T) {
	for _, n := range []int{0, 1, run, run + 1, 10 * run} {
		seen := make([]atomic.Int32, n)
		if err := Each(n, func(i int) error { seen[i].Add(1); return nil }); err != nil {
			t.Fatal(err)
		}
		for i := range seen {
			if c := seen[i].Load(); c != 1 {
				t.Fatalf("n=%d: index %d called %d times", n, i, c)
			}
		}
	}
	boom := errors.New("boom")
	if err := Each(10*run, func(i int) error {
		if i == 3*run+7 {
			return boom
		}
		return nil
	}); !errors.Is(err, boom) {
		t.Fatalf("Each = %v, want the error", err)
	}
}
