package grants_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/credbroker/credbroker/server/internal/grants"
)

func TestLimitsAllows(t *testing.T) {
	t.Parallel()
	readGroups := grants.Limits{Methods: []string{"GET", "HEAD"}, PathPrefixes: []string{"/v2/systemgroups", "/v2/users"}}
	tests := []struct {
		name   string
		limits grants.Limits
		method string
		path   string
		want   bool
	}{
		{"zero limits allow any call", grants.Limits{}, "DELETE", "/v2/anything/at/all", true},
		{"zero limits do not look at the path", grants.Limits{}, "GET", "/v2/%2e%2e", true},

		{"prefix itself", readGroups, "GET", "/v2/systemgroups", true},
		{"below the prefix", readGroups, "GET", "/v2/systemgroups/1/members", true},
		{"another listed method", readGroups, "HEAD", "/v2/systemgroups/1", true},
		{"second prefix", readGroups, "GET", "/v2/users/u1", true},
		{"method not listed", readGroups, "POST", "/v2/systemgroups", false},
		{"methods compare exactly", readGroups, "get", "/v2/systemgroups", false},
		{"longer segment", readGroups, "GET", "/v2/systemgroupsx", false},
		{"longer segment below", readGroups, "GET", "/v2/systemgroupsx/1", false},
		{"shorter segment", readGroups, "GET", "/v2/system", false},
		{"parent of the prefix", readGroups, "GET", "/v2", false},
		{"root", readGroups, "GET", "/", false},
		{"segments compare by case", readGroups, "GET", "/V2/systemgroups", false},
		{"segment with a parameter", readGroups, "GET", "/v2/systemgroups;x/1", false},
		{"escaped segment is decoded", readGroups, "GET", "/v2/system%67roups/1", true},
		{"escaped semicolon inside a segment", readGroups, "GET", "/v2/systemgroups/a%3Bb", true},
		{"encoded slash is not a separator", readGroups, "GET", "/v2%2Fsystemgroups", false},
		{"encoded slash below the prefix stays one segment", readGroups, "GET", "/v2/systemgroups%2F1", false},
		{"invalid escape", readGroups, "GET", "/v2/systemgroups/%zz", false},
		{"dot-dot below the prefix", readGroups, "GET", "/v2/systemgroups/../admin", false},
		{"dot below the prefix", readGroups, "GET", "/v2/systemgroups/./1", false},
		{"encoded dot-dot", readGroups, "GET", "/v2/systemgroups/%2e%2e/admin", false},
		{"encoded dot-dot, upper-case", readGroups, "GET", "/v2/systemgroups/%2E%2E", false},
		{"half-encoded dot-dot", readGroups, "GET", "/v2/systemgroups/.%2e/admin", false},
		{"dot-dot with a parameter", readGroups, "GET", "/v2/systemgroups/..;x/admin", false},
		{"dot with a parameter", readGroups, "GET", "/v2/systemgroups/.;jsessionid=1", false},
		{"dot-dot with an encoded semicolon", readGroups, "GET", "/v2/systemgroups/..%3bx/admin", false},
		{"dot-dot at the end", readGroups, "GET", "/v2/systemgroups/..", false},
		{"segment of three dots is a name", readGroups, "GET", "/v2/systemgroups/...", true},

		{"methods only: any path", grants.Limits{Methods: []string{"GET"}}, "GET", "/anything", true},
		{"methods only: other method", grants.Limits{Methods: []string{"GET"}}, "PUT", "/anything", false},
		{"prefixes only: any method", grants.Limits{PathPrefixes: []string{"/v2/users"}}, "DELETE", "/v2/users/1", true},
		{"prefixes only: other path", grants.Limits{PathPrefixes: []string{"/v2/users"}}, "DELETE", "/v2/groups", false},
		{"prefix / allows every path", grants.Limits{PathPrefixes: []string{"/"}}, "GET", "/a/b/c", true},
		{"prefix / allows the root", grants.Limits{PathPrefixes: []string{"/"}}, "GET", "/", true},
		{"prefix / still refuses dot-dot", grants.Limits{PathPrefixes: []string{"/"}}, "GET", "/a/%2e%2e/b", false},
		{"non-ASCII prefix, escaped path", grants.Limits{PathPrefixes: []string{"/v2/café"}}, "GET", "/v2/caf%C3%A9/1", true},
		{"non-ASCII prefix, other letter", grants.Limits{PathPrefixes: []string{"/v2/café"}}, "GET", "/v2/caf%C3%A8/1", false},
		{"multi-segment prefix, partial match", grants.Limits{PathPrefixes: []string{"/v2/users/u1/keys"}}, "GET", "/v2/users/u1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.limits.Allows(tc.method, tc.path); got != tc.want {
				t.Errorf("Limits{%v}.Allows(%q, %q) = %v, want %v", tc.limits, tc.method, tc.path, got, tc.want)
			}
		})
	}
}

func TestLimitsLimited(t *testing.T) {
	t.Parallel()
	tests := []struct {
		limits grants.Limits
		want   bool
	}{
		{grants.Limits{}, false},
		{grants.Limits{Methods: []string{}, PathPrefixes: []string{}}, false},
		{grants.Limits{Methods: []string{"GET"}}, true},
		{grants.Limits{PathPrefixes: []string{"/"}}, true},
	}
	for _, tc := range tests {
		if got := tc.limits.Limited(); got != tc.want {
			t.Errorf("%#v.Limited() = %v, want %v", tc.limits, got, tc.want)
		}
	}
}

func TestLimitsEqual(t *testing.T) {
	t.Parallel()
	get := grants.Limits{Methods: []string{"GET"}, PathPrefixes: []string{"/v2/users"}}
	tests := []struct {
		name string
		a, b grants.Limits
		want bool
	}{
		{"zero values", grants.Limits{}, grants.Limits{}, true},
		{"nil and empty", grants.Limits{}, grants.Limits{Methods: []string{}, PathPrefixes: []string{}}, true},
		{"same", get, grants.Limits{Methods: []string{"GET"}, PathPrefixes: []string{"/v2/users"}}, true},
		{"other method", get, grants.Limits{Methods: []string{"POST"}, PathPrefixes: []string{"/v2/users"}}, false},
		{"more methods", get, grants.Limits{Methods: []string{"GET", "HEAD"}, PathPrefixes: []string{"/v2/users"}}, false},
		{"other prefix", get, grants.Limits{Methods: []string{"GET"}, PathPrefixes: []string{"/v2/groups"}}, false},
		{"no prefixes", get, grants.Limits{Methods: []string{"GET"}}, false},
		{"no methods", get, grants.Limits{PathPrefixes: []string{"/v2/users"}}, false},
		{"limited and unlimited", get, grants.Limits{}, false},
		{"method and prefix swapped", grants.Limits{Methods: []string{"/x"}}, grants.Limits{PathPrefixes: []string{"/x"}}, false},
	}
	for _, tc := range tests {
		if got := tc.a.Equal(tc.b); got != tc.want {
			t.Errorf("%s: %#v.Equal(%#v) = %v, want %v", tc.name, tc.a, tc.b, got, tc.want)
		}
		if got := tc.b.Equal(tc.a); got != tc.want {
			t.Errorf("%s: %#v.Equal(%#v) = %v, want %v", tc.name, tc.b, tc.a, got, tc.want)
		}
	}
}

func TestLimitsString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		limits grants.Limits
		want   string
	}{
		{grants.Limits{}, ""},
		{grants.Limits{Methods: []string{"GET"}}, "http_methods GET"},
		{grants.Limits{Methods: []string{"GET", "HEAD"}}, "http_methods GET,HEAD"},
		{grants.Limits{PathPrefixes: []string{"/v2/systemgroups", "/v2/users"}}, "path_prefixes /v2/systemgroups,/v2/users"},
		{grants.Limits{Methods: []string{"GET"}, PathPrefixes: []string{"/v2/systemgroups"}}, "http_methods GET; path_prefixes /v2/systemgroups"},
	}
	for _, tc := range tests {
		if got := tc.limits.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.limits, got, tc.want)
		}
	}
}

func TestIndex(t *testing.T) {
	t.Parallel()
	readOnly := grants.Limits{Methods: []string{"GET"}}
	x := grants.NewIndex()

	type lookup struct {
		account, principal string
		want               grants.Limits
		ok                 bool
	}
	check := func(step string, lookups ...lookup) {
		t.Helper()
		for _, l := range lookups {
			got, ok := x.Lookup(l.account, l.principal)
			if ok != l.ok || !got.Equal(l.want) {
				t.Errorf("%s: Lookup(%q, %q) = %v, %v; want %v, %v", step, l.account, l.principal, got, ok, l.want, l.ok)
			}
		}
	}

	check("empty index", lookup{"acme", "spiffe://example.org/billing", grants.Limits{}, false})

	x.Set("acme", map[string]grants.Limits{
		"spiffe://example.org/billing": {},
		"callerKeys/ro":                readOnly,
	})
	x.Set("other", map[string]grants.Limits{"cn:ops": {}})
	check("after Set",
		lookup{"acme", "spiffe://example.org/billing", grants.Limits{}, true},
		lookup{"acme", "callerKeys/ro", readOnly, true},
		lookup{"acme", "cn:ops", grants.Limits{}, false},
		lookup{"other", "cn:ops", grants.Limits{}, true},
		lookup{"other", "callerKeys/ro", grants.Limits{}, false},
		lookup{"unknown", "callerKeys/ro", grants.Limits{}, false},
	)

	// Set replaces the account's grants whole.
	x.Set("acme", map[string]grants.Limits{"cn:ops": readOnly})
	check("after the second Set",
		lookup{"acme", "cn:ops", readOnly, true},
		lookup{"acme", "spiffe://example.org/billing", grants.Limits{}, false},
		lookup{"acme", "callerKeys/ro", grants.Limits{}, false},
		lookup{"other", "cn:ops", grants.Limits{}, true},
	)

	x.Set("acme", nil)
	check("after Set with no grants", lookup{"acme", "cn:ops", grants.Limits{}, false})

	x.Set("acme", map[string]grants.Limits{"cn:ops": {}})
	x.Remove("acme")
	x.Remove("never-set")
	check("after Remove",
		lookup{"acme", "cn:ops", grants.Limits{}, false},
		lookup{"other", "cn:ops", grants.Limits{}, true},
	)
}

// Writers replace and remove accounts while readers look up, as the
// accounts package and the request handlers do (run with -race).
func TestIndexConcurrentUse(t *testing.T) {
	t.Parallel()
	x := grants.NewIndex()
	stable := grants.Limits{PathPrefixes: []string{"/v2/users"}}
	x.Set("stable", map[string]grants.Limits{"p": stable})

	const writers, readers, rounds = 4, 4, 200
	var wg sync.WaitGroup
	errs := make(chan string, readers*rounds)
	for w := range writers {
		wg.Go(func() {
			account := fmt.Sprintf("acct-%d", w)
			for i := range rounds {
				x.Set(account, map[string]grants.Limits{"p": {Methods: []string{fmt.Sprint(i)}}})
				x.Remove(account)
			}
			x.Set(account, map[string]grants.Limits{"p": {Methods: []string{"final"}}})
		})
	}
	for r := range readers {
		wg.Go(func() {
			for i := range rounds {
				if got, ok := x.Lookup("stable", "p"); !ok || !got.Equal(stable) {
					errs <- fmt.Sprintf("Lookup(stable, p) = %v, %v during writes", got, ok)
				}
				x.Lookup(fmt.Sprintf("acct-%d", (r+i)%writers), "p")
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	for w := range writers {
		want := grants.Limits{Methods: []string{"final"}}
		if got, ok := x.Lookup(fmt.Sprintf("acct-%d", w), "p"); !ok || !got.Equal(want) {
			t.Errorf("acct-%d after the writers: %v, %v; want %v", w, got, ok, want)
		}
	}
}
