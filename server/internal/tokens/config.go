package tokens

import (
	"log/slog"
	"time"
)

// Config tunes the manager. Zero values take the documented defaults.
type Config struct {
	// RefreshMargin: the refresher renews a token this long before it
	// expires (at most half its lifetime), less up to a quarter of the
	// lifetime at random so that accounts linked together do not refresh
	// together (see refreshTime). Default 5m.
	RefreshMargin time.Duration
	// RefreshConcurrency bounds the refresher's simultaneous upstream
	// requests; with tokens spread over a quarter of their lifetime, 16
	// keep 100,000 hour-long tokens renewed against a provider that takes
	// 100 ms to answer (about 110 a second at the first renewal). Default 16.
	RefreshConcurrency int
	// ScanInterval is how often the refresher looks for due work. Default 1s.
	ScanInterval time.Duration
	// BackoffMin and BackoffMax bound the exponential backoff after a
	// provider failure without Retry-After. Defaults 1s and 5m.
	BackoffMin, BackoffMax time.Duration
	// RejectedRecheck is how long to wait before asking again after the
	// provider rejected the credentials. Default 10m.
	RejectedRecheck time.Duration
	// ExpiryWarning: once an account's credentials expire within this
	// window, it shows SECRET_EXPIRING and is warned about once a day
	// (see checkExpiry). Default 7 days, JumpCloud's own notice.
	ExpiryWarning time.Duration
	// ForcedInterval bounds the upstream requests a caller can
	// trigger for an account while the broker has what it needs: at most
	// one token refresh forced by min_ttl, and one check of an API key
	// prompted by an API's answer (APIKeyAnswered), per interval. Default 10s.
	ForcedInterval time.Duration
	// Fingerprint names a token in the audit trail without revealing it;
	// it is computed once per token, when first needed. Default: no
	// fingerprint.
	Fingerprint func(token string) string
	// OnCacheLookup is told whether each lookup found a cached token that
	// would do (for metrics). Default: nothing.
	OnCacheLookup func(hit bool)
	// OnLocked is called when this process holds an account's refresh
	// lock and the stored token will not do, just before it checks that
	// it still holds the lock and asks the provider (tests pause it
	// there). Default: nothing.
	OnLocked func(account string)
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// DefaultConfig is the configuration New uses for zero fields.
func DefaultConfig() Config {
	return Config{
		RefreshMargin:      5 * time.Minute,
		RefreshConcurrency: 16,
		ScanInterval:       time.Second,
		BackoffMin:         time.Second,
		BackoffMax:         5 * time.Minute,
		RejectedRecheck:    10 * time.Minute,
		ExpiryWarning:      7 * 24 * time.Hour,
		ForcedInterval:     10 * time.Second,
		Fingerprint:        func(string) string { return "" },
		OnCacheLookup:      func(bool) {},
		Now:                time.Now,
		Logger:             slog.Default(),
	}
}
func (c *Config) setDefaults() {
	d := DefaultConfig()
	fillDuration(&c.RefreshMargin, d.RefreshMargin)
	fillDuration(&c.ScanInterval, d.ScanInterval)
	fillDuration(&c.BackoffMin, d.BackoffMin)
	fillDuration(&c.BackoffMax, d.BackoffMax)
	fillDuration(&c.RejectedRecheck, d.RejectedRecheck)
	fillDuration(&c.ExpiryWarning, d.ExpiryWarning)
	fillDuration(&c.ForcedInterval, d.ForcedInterval)
	if c.RefreshConcurrency <= 0 {
		c.RefreshConcurrency = d.RefreshConcurrency
	}
	if c.Now == nil {
		c.Now = d.Now
	}
	if c.Fingerprint == nil {
		c.Fingerprint = d.Fingerprint
	}
	if c.OnCacheLookup == nil {
		c.OnCacheLookup = d.OnCacheLookup
	}
	if c.OnLocked == nil {
		c.OnLocked = func(string) {}
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
}
func fillDuration(p *time.Duration, v time.Duration) {
	if *p <= 0 {
		*p = v
	}
}
