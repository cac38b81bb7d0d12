package backoff

import (
	"testing"
	"time"
)

func TestJittered(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 10: time.Minute, 100: time.Minute} {
		for range 20 {
			if got := Jittered(n, time.Second, time.Minute); got < want/2 || got > want {
				t.Fatalf("Jittered(%d) = %v, want in [%v, %v]", n, got, want/2, want)
			}
		}
	}
}
