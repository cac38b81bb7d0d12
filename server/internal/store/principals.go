package store

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
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
	changed := false
	err := s.update(func(tx *bolt.Tx) error {
		retyped := func(p string) ([]string, bool) {
			ps := typed(p)
			return ps, len(ps) != 1 || ps[0] != p
		}
		accounts := tx.Bucket(accountsBucket)
		var updated []Account // written after the walk: bbolt forbids writes during ForEach
		err := accounts.ForEach(func(k, v []byte) error {
			var a Account
			if err := s.open(accountsBucket, k, v, &a); errors.Is(err, ErrIntegrity) {
				return nil // never used, so never rewritten
			} else if err != nil {
				return fmt.Errorf("account %q: %w", k, err)
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
			return nil
		})
		if err != nil {
			return err
		}
		for _, a := range updated {
			if err := s.put(tx, accountsBucket, a.ID, a); err != nil {
				return err
			}
		}
		admins := tx.Bucket(adminsBucket)
		var old []AdminPrincipal
		err = admins.ForEach(func(k, v []byte) error {
			var a AdminPrincipal
			if err := s.open(adminsBucket, k, v, &a); errors.Is(err, ErrIntegrity) {
				return nil
			} else if err != nil {
				return fmt.Errorf("admin principal %q: %w", k, err)
			}
			if _, ok := retyped(a.Principal); ok {
				old = append(old, a)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, a := range old {
			ps, _ := retyped(a.Principal)
			if err := admins.Delete([]byte(a.Principal)); err != nil {
				return err
			}
			for _, p := range ps {
				a.Principal = p
				if err := s.put(tx, adminsBucket, p, a); err != nil {
					return err
				}
			}
		}
		changed = len(updated) > 0 || len(old) > 0
		if err := tx.Bucket(metaBucket).Put(principalsTypedKey, []byte("1")); err != nil {
			return err
		}
		if !changed {
			return nil
		}
		return s.appendAudit(tx, ev)
	})
	return changed && err == nil, err
}
