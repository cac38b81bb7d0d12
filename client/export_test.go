package client

import (
	"time"

	"golang.org/x/oauth2"
)

// AgeCachedToken makes a TokenSource's cached token due for renewal, as the
// passing of time would.
func AgeCachedToken(ts oauth2.TokenSource) {
	s := ts.(*tokenSource)
	if ct := s.current.Load(); ct != nil {
		aged := *ct
		aged.useUntil = time.Now().Add(-time.Second)
		s.current.Store(&aged)
	}
}
