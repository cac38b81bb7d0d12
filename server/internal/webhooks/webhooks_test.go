package webhooks

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestRefused(t *testing.T) {
	for addr, want := range map[string]bool{
		"169.254.169.254":        true,
		"169.254.170.2":          true,
		"fe80::1":                true,
		"ff02::1":                true,
		"fd00:ec2::254":          true,
		"100.100.100.200":        true,
		"::ffff:169.254.169.254": true, // IPv4-mapped
		"::a9fe:a9fe":            true, // IPv4-compatible
		"64:ff9b::a9fe:a9fe":     true, // NAT64
		"64:ff9b:1::a9fe:a9fe":   true, // local-use NAT64
		"2002:a9fe:a9fe::1":      true, // 6to4
		"127.0.0.1":              false,
		"::1":                    false,
		"10.0.0.1":               false,
		"192.168.1.10":           false,
		"2001:db8::1":            false,
		"64:ff9b::a01:101":       false, // NAT64 of 10.1.1.1
		"2002:a01:101::1":        false,
	} {
		if got := refused(netip.MustParseAddr(addr)); got != want {
			t.Errorf("refused(%s) = %v, want %v", addr, got, want)
		}
	}
}

// The client refuses the address it would connect to, before connecting,
// whatever the URL named; unless allowed.
func TestClientRefusesLinkLocal(t *testing.T) {
	c := newClient(Config{Timeout: time.Second})
	for _, u := range []string{"http://[::ffff:169.254.169.254]:1/", "http://[64:ff9b::a9fe:a9fe]:1/", "http://[fe80::1%25lo]:1/"} {
		_, err := c.Post(u, "application/json", nil)
		if !errors.Is(err, errRefusedAddress) {
			t.Errorf("POST %s: %v, want the address refused", u, err)
		}
	}
	_, err := newClient(Config{Timeout: time.Second, AllowLinkLocal: true}).Post("http://[fe80::1%25lo]:1/", "application/json", nil)
	if errors.Is(err, errRefusedAddress) {
		t.Errorf("allowed, the address was refused: %v", err)
	}
}
