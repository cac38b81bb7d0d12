package proxy

import (
	"errors"
	"net/url"
	"testing"
)

func TestParsePath(t *testing.T) {
	good := []struct{ in, id, path string }{
		{"/v1/accounts/acme/proxy/v2/systems", "acme", "/v2/systems"},
		{"/v1/accounts/acme/proxy/organizations", "acme", "/organizations"},
		{"/v1/accounts/acme/proxy/v2/systems/a%20b", "acme", "/v2/systems/a%20b"},
		{"/v1/accounts/acme/proxy/v2/..x/x..", "acme", "/v2/..x/x.."},
	}
	for _, c := range good {
		id, path, err := ParsePath(c.in)
		if err != nil || id != c.id || path != c.path {
			t.Errorf("ParsePath(%q) = %q, %q, %v; want %q, %q", c.in, id, path, err, c.id, c.path)
		}
	}
	bad := []string{
		"/v1/accounts/acme/proxy/",
		"/v1/accounts/acme/proxy",
		"/v1/accounts//proxy/x",
		"/v2/accounts/acme/proxy/x",
		"/v1/accounts/acme/other/proxy/x",
		"/v1/accounts/acme/proxy/../other/proxy/x",
		"/v1/accounts/acme/proxy/v2/../../../other",
		"/v1/accounts/acme/proxy/v2/./systems",
		"/v1/accounts/acme/proxy/%2e%2e/x",
		"/v1/accounts/acme/proxy/%2E%2E/x",
		"/v1/accounts/acme/proxy/.%2e/x",
		"/v1/accounts/acme/proxy/v2%2f..%2f..%2fother",
		"/v1/accounts/acme/proxy/v2%2F..",
		"/v1/accounts/acme/proxy/v2%5c..%5cx",
		"/v1/accounts/acme/proxy/v2\\..\\x",
		"/v1/accounts/acme/proxy//evil.example/x",
		"/v1/accounts/acme/proxy/v2//systems",
		"/v1/accounts/acme/proxy/v2/%zz",
	}
	for _, in := range bad {
		if id, path, err := ParsePath(in); !errors.Is(err, ErrBadPath) {
			t.Errorf("ParsePath(%q) = %q, %q, %v; want ErrBadPath", in, id, path, err)
		}
	}
}

func TestJoinPathStaysBelowBase(t *testing.T) {
	base, _ := url.Parse("https://console.jumpcloud.com/api")
	u := joinPath(base, "/v2/systems/a%20b")
	if u.Host != "console.jumpcloud.com" || u.EscapedPath() != "/api/v2/systems/a%20b" || u.Path != "/api/v2/systems/a b" {
		t.Fatalf("joinPath = host %q, path %q (escaped %q)", u.Host, u.Path, u.EscapedPath())
	}
	if base.Path != "/api" {
		t.Fatalf("joinPath changed the base: %q", base.Path)
	}
}
