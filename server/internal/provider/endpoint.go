package provider

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/credbroker/credbroker/internal/loopback"
)

// maxURL bounds an endpoint URL.
const maxURL = 2048

// ErrEndpointRefused means a stored or configured endpoint URL failed the
// check it passed when it was linked (see CheckEndpointURL), so nothing
// was sent to it.
var ErrEndpointRefused = errors.New("endpoint URL refused")

// CheckEndpointURL accepts the URLs credentials may be sent to: https, or
// http only on loopback hosts (for local stand-ins), absolute, without
// credentials or a fragment. A token request must never cross a network in
// clear. It runs when an account is linked and again whenever a URL is
// used, so that a URL that somehow changed since is refused, not used.
func CheckEndpointURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil || len(raw) > maxURL || u.Host == "" || u.Opaque != "":
		return errors.New("must be an absolute http(s) URL")
	case u.User != nil:
		return errors.New("must not contain credentials")
	case u.Fragment != "":
		return errors.New("must not contain a fragment")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && loopback.Host(u.Hostname()):
		return nil
	}
	return errors.New("must use https (http is allowed only for loopback hosts)")
}

// usable checks an endpoint URL before a request is sent to it.
func usable(what, raw string) error {
	if err := CheckEndpointURL(raw); err != nil {
		return fmt.Errorf("%w: the %s %s", ErrEndpointRefused, what, err)
	}
	return nil
}
