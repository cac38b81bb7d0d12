// Package ratelimit gives each caller principal its own token bucket, so
// that one busy or broken caller cannot starve the others.
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter holds one bucket per principal. Principals are proven identities,
// so their number is bounded by the keys and certificates an admin issued.
type Limiter struct {
	rate    rate.Limit
	burst   int
	buckets sync.Map // principal -> *rate.Limiter
}

// New allows each principal perSecond calls a second on average, and up to
// burst at once. perSecond <= 0 turns limiting off.
func New(perSecond float64, burst int) *Limiter {
	if perSecond <= 0 {
		return &Limiter{rate: rate.Inf}
	}
	return &Limiter{rate: rate.Limit(perSecond), burst: max(burst, 1)}
}

// Allow takes a token from principal's bucket, or says how long until one
// is available.
func (l *Limiter) Allow(principal string, now time.Time) (bool, time.Duration) {
	if l.rate == rate.Inf {
		return true, 0
	}
	b, ok := l.buckets.Load(principal)
	if !ok {
		b, _ = l.buckets.LoadOrStore(principal, rate.NewLimiter(l.rate, l.burst))
	}
	r := b.(*rate.Limiter).ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}
