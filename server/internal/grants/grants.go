// Package grants answers, from memory and on every GetToken, whether a
// principal may get an account's tokens. The accounts package keeps it in
// step with the stored grants.
package grants

import "sync"

// Index maps each account to the principals it grants access.
type Index struct {
	mu sync.RWMutex
	m  map[string]map[string]struct{}
}

// NewIndex returns an empty index: nobody may get anything.
func NewIndex() *Index { return &Index{m: map[string]map[string]struct{}{}} }

// Set replaces an account's grants.
func (x *Index) Set(accountID string, principals []string) {
	set := make(map[string]struct{}, len(principals))
	for _, p := range principals {
		set[p] = struct{}{}
	}
	x.mu.Lock()
	x.m[accountID] = set
	x.mu.Unlock()
}

// Remove forgets an account.
func (x *Index) Remove(accountID string) {
	x.mu.Lock()
	delete(x.m, accountID)
	x.mu.Unlock()
}

// Allowed says whether principal may get the account's tokens. An unknown
// account grants nothing, so the answer does not tell whether it exists.
func (x *Index) Allowed(accountID, principal string) bool {
	x.mu.RLock()
	_, ok := x.m[accountID][principal]
	x.mu.RUnlock()
	return ok
}
