package api

import (
	"strings"
	"testing"
)

func TestValidAccountID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "acme": true, "acme-prod-2": true, "0": true, strings.Repeat("a", 63): true,
		"": false, strings.Repeat("a", 64): false, "-acme": false, "acme-": false, "Acme": false,
		"ac_me": false, "ac.me": false, "ac/me": false, "acmé": false, "ac me": false,
	} {
		if got := validAccountID(id); got != want {
			t.Errorf("validAccountID(%q) = %v, want %v", id, got, want)
		}
	}
}
