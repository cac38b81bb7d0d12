package store

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// TypePrincipals replaces, once in the store's life, the principal of each
// account grant and admin principal by the principals typed returns for
// it (earlier builds stored certificate principals untyped), and records
// ev if that changed anything, all in one transaction: a crash leaves the
// store wholly as it was or wholly typed. typed must return its argument
// alone for a principal it keeps, and distinct principals for distinct
// arguments. Later calls write nothing. It reports whether anything changed.
func (s *Store) TypePrincipals(typed func(string) []string, ev AuditEvent) (bool, error) {
	if done, err := s.meta(principalsTypedKey); err != nil || done != nil {
		return false, err
	}
	l, err := s.local()
	if err != nil {
		return false, nil // earlier versions stored their principals in bbolt only
	}
	changed := false
	err = l.Bulk(func(b *boltdb.Bulk) error {
		retyped := func(p string) ([]string, bool) {
			ps := typed(p)
			return ps, len(ps) != 1 || ps[0] != p
		}
		accounts, err := b.List(key(accountsBucket, ""))
		if err != nil {
			return err
		}
		var updated []Account
		for _, r := range accounts {
			var a Account
			if err := s.open(accountsBucket, []byte(r.Key[len(accountsBucket)+1:]), r.Value, &a); errors.Is(err, ErrIntegrity) {
				continue // never used, so never rewritten
			} else if err != nil {
				return fmt.Errorf("account %q: %w", r.Key, err)
			}
			var grants []Grant
			grantsChanged := false
			for _, g := range a.Grants {
				ps, ok := retyped(g.Principal)
				grantsChanged = grantsChanged || ok
				for _, p := range ps {
					g.Principal = p
					grants = append(grants, g)
				}
			}
			if grantsChanged {
				slices.SortFunc(grants, func(x, y Grant) int { return cmp.Compare(x.Principal, y.Principal) })
				a.Grants = grants
				updated = append(updated, a)
			}
		}
		for _, a := range updated {
			if err := s.bulkPut(b, accountsBucket, a.ID, a); err != nil {
				return err
			}
		}
		admins, err := b.List(key(adminsBucket, ""))
		if err != nil {
			return err
		}
		var old []AdminPrincipal
		for _, r := range admins {
			var a AdminPrincipal
			if err := s.open(adminsBucket, []byte(r.Key[len(adminsBucket)+1:]), r.Value, &a); errors.Is(err, ErrIntegrity) {
				continue
			} else if err != nil {
				return fmt.Errorf("admin principal %q: %w", r.Key, err)
			}
			if _, ok := retyped(a.Principal); ok {
				old = append(old, a)
			}
		}
		for _, a := range old {
			ps, _ := retyped(a.Principal)
			if err := b.Delete(key(adminsBucket, a.Principal)); err != nil {
				return err
			}
			for _, p := range ps {
				a.Principal = p
				if err := s.bulkPut(b, adminsBucket, p, a); err != nil {
					return err
				}
			}
		}
		changed = len(updated) > 0 || len(old) > 0
		if err := b.Put(key(metaBucket, string(principalsTypedKey)), []byte("1")); err != nil {
			return err
		}
		if !changed {
			return nil
		}
		return s.bulkAudit(b, ev)
	})
	if changed && err == nil {
		s.auditEvents.Add(1)
	}
	return changed && err == nil, err
}

// bulkPut stores a record under its tag in a bulk transaction.
func (s *Store) bulkPut(b *boltdb.Bulk, bucket []byte, id string, v any) error {
	put := s.put(bucket, id, v)
	if put.err != nil {
		return put.err
	}
	return b.Put(put.op.Key, put.op.Value)
}
