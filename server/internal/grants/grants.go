// Package grants answers, from memory and on every GetToken and proxied
// call, whether a principal may use an account, and within which limits.
// The accounts package keeps it in step with the stored grants.
package grants

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
)

// Limits restrict a grant to some egress-proxy calls. The zero value
// limits nothing.
type Limits struct {
	// Methods are the HTTP methods allowed (upper-case); empty: any.
	Methods []string
	// PathPrefixes are the paths below the account's API base URL whose
	// calls are allowed, matched segment by segment; empty: any.
	PathPrefixes []string
}

// Limited reports whether the limits restrict anything. A limited grant
// gets no tokens, since a token would not be limited.
func (l Limits) Limited() bool { return len(l.Methods) > 0 || len(l.PathPrefixes) > 0 }

// Equal reports whether two limits allow the same calls (both as stored:
// sorted, without duplicates).
func (l Limits) Equal(o Limits) bool {
	return slices.Equal(l.Methods, o.Methods) && slices.Equal(l.PathPrefixes, o.PathPrefixes)
}

// Allows reports whether a call with method to the escaped upstream path
// (as proxy.ParsePath returns it: "/" and segments without dot segments or
// encoded slashes) is within the limits. Its decoded segments must start
// with all of a prefix's: "/v2/systemgroups" allows "/v2/systemgroups" and
// "/v2/systemgroups/1/members", not "/v2/systemgroupsx". A segment that
// some servers take for a dot segment ("..;x") is outside every prefix.
func (l Limits) Allows(method, escapedPath string) bool {
	if len(l.Methods) > 0 && !slices.Contains(l.Methods, method) {
		return false
	}
	if len(l.PathPrefixes) == 0 {
		return true
	}
	segs := strings.Split(strings.TrimPrefix(escapedPath, "/"), "/")
	for i, s := range segs {
		dec, err := url.PathUnescape(s)
		if name, _, _ := strings.Cut(dec, ";"); err != nil || name == "." || name == ".." {
			return false
		}
		segs[i] = dec
	}
	return slices.ContainsFunc(l.PathPrefixes, func(prefix string) bool { return underPrefix(segs, prefix) })
}

// underPrefix reports whether the path segments start with the prefix's.
func underPrefix(segs []string, prefix string) bool {
	rest := strings.TrimPrefix(prefix, "/")
	if rest == "" {
		return true // "/": every path
	}
	for _, want := range strings.Split(rest, "/") {
		if len(segs) == 0 || segs[0] != want {
			return false
		}
		segs = segs[1:]
	}
	return true
}

// String names the limits for people, e.g. "http_methods GET; path_prefixes
// /v2/systemgroups"; "" if there are none.
func (l Limits) String() string {
	var parts []string
	if len(l.Methods) > 0 {
		parts = append(parts, "http_methods "+strings.Join(l.Methods, ","))
	}
	if len(l.PathPrefixes) > 0 {
		parts = append(parts, "path_prefixes "+strings.Join(l.PathPrefixes, ","))
	}
	return strings.Join(parts, "; ")
}

// Index maps each account to the principals it grants, with their limits.
type Index struct {
	mu sync.RWMutex
	m  map[string]map[string]Limits
}

// NewIndex returns an empty index: nobody may get anything.
func NewIndex() *Index { return &Index{m: map[string]map[string]Limits{}} }

// Set replaces an account's grants: the limits of each principal it grants.
func (x *Index) Set(accountID string, grants map[string]Limits) {
	x.mu.Lock()
	x.m[accountID] = grants
	x.mu.Unlock()
}

// Replace makes the index hold exactly these accounts' grants.
func (x *Index) Replace(all map[string]map[string]Limits) {
	x.mu.Lock()
	x.m = all
	x.mu.Unlock()
}

// Remove forgets an account.
func (x *Index) Remove(accountID string) {
	x.mu.Lock()
	delete(x.m, accountID)
	x.mu.Unlock()
}

// Lookup returns the limits of principal's grant for the account, and
// whether it has one. An unknown account grants nothing, so the answer does
// not tell whether it exists.
func (x *Index) Lookup(accountID, principal string) (Limits, bool) {
	x.mu.RLock()
	l, ok := x.m[accountID][principal]
	x.mu.RUnlock()
	return l, ok
}

// Granting returns the accounts that grant principal anything, sorted.
func (x *Index) Granting(principal string) []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var ids []string
	for id, grants := range x.m {
		if _, ok := grants[principal]; ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// NoGrant refuses a principal without a grant for an account, with the
// same answer whether or not the account exists.
func NoGrant(principal, account string) error {
	return grpcerr.New(codes.PermissionDenied, fmt.Sprintf("%s has no grant for %s (or there is no such account)", principal, account))
}

// NoTokens refuses a token to a principal whose grant is limited to some
// egress-proxy calls: a token would not be limited.
func NoTokens(principal, account string, l Limits) error {
	return grpcerr.WithReason(codes.PermissionDenied, credbrokerv1.ErrorReason_GRANT_LIMITED,
		fmt.Sprintf("%s's grant for %s is limited to some egress-proxy calls (%s), so it gets no tokens: a token would not be limited; call the API through the egress proxy", principal, account, l))
}

// OutsideLimits refuses a proxied call that the principal's grant does not
// allow.
func OutsideLimits(principal, account string, l Limits) error {
	return grpcerr.WithReason(codes.PermissionDenied, credbrokerv1.ErrorReason_GRANT_LIMITED,
		fmt.Sprintf("%s's grant for %s allows only %s", principal, account, l))
}
