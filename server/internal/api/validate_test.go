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

// Text fields and extra parameters must be UTF-8: the Hub's forms pass on
// any bytes, which JSON would store as U+FFFD (two keys then one).
func TestTextMustBeUTF8(t *testing.T) {
	if err := checkText("client_id", "client-\xff", true, 100); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("checkText of invalid UTF-8: %v, want an error naming UTF-8", err)
	}
	if err := checkText("client_id", "clienté 👩‍💻", true, 100); err != nil {
		t.Errorf("checkText of UTF-8 text: %v", err)
	}
	for _, v := range []string{"a\x1bb", "a\u0085b", "a\u2028b", "safe\u202eexe.txt", "a\u2066b"} {
		if err := checkText("description", v, false, 100); err == nil {
			t.Errorf("checkText(%q) accepted a control character", v)
		}
	}
	for _, params := range []map[string]string{{"a\xff": "1", "a\xfe": "2"}, {"audience": "x\xff"}} {
		if err := checkParams("endpoint_params", params); err == nil {
			t.Errorf("checkParams(%q) accepted invalid UTF-8", params)
		}
	}
	if err := checkParams("endpoint_params", map[string]string{"audience": "café"}); err != nil {
		t.Errorf("checkParams of UTF-8 text: %v", err)
	}
}
