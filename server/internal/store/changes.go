package store

import (
	"strings"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// Kinds of records, as the first part of their storage keys.
const (
	KindAccounts        = "accounts"
	KindTokens          = "tokens"
	KindCallerKeys      = "caller_keys"
	KindAdminPrincipals = "admin_principals"
	// The outbox of credential events, and their log (see Event).
	KindEventOutbox = "event_outbox"
	KindEvents      = "events"
)

// Split returns the kind and id of a record's storage key.
func Split(key string) (kind, id string) {
	kind, id, _ = strings.Cut(key, "/")
	return kind, id
}

// Revision is the storage engine's latest revision: every commit made
// before the call, by anyone, is at or before it.
func (s *Store) Revision() (storage.Revision, error) {
	p, err := s.db.List(ctx, storage.Range{Prefix: key(metaBucket, ""), Limit: 1})
	return p.Revision, err
}

// Committed is the revision of this process's latest commit of records
// that watchers see (all but the audit trail's): once a storage.Mirror has
// applied it, the mirror holds every change this process made.
func (s *Store) Committed() storage.Revision { return storage.Revision(s.watched.Load()) }

// DecodeAccount reads the account a committed change wrote; an account
// whose record fails its check comes with only its ID, marked Tampered.
func (s *Store) DecodeAccount(ev storage.Event) Account {
	return decodeEvent[Account](s, accountsBucket, ev)
}

// DecodeTokenState reads the token state a committed change wrote, and
// whether it passed its check.
func (s *Store) DecodeTokenState(ev storage.Event) (TokenState, bool) {
	_, id := Split(ev.Key)
	var t TokenState
	err := s.open(tokensBucket, []byte(id), ev.Value, &t)
	return t, err == nil
}

// DecodeCallerKey reads the caller key a committed change wrote.
func (s *Store) DecodeCallerKey(ev storage.Event) CallerKey {
	return decodeEvent[CallerKey](s, callerKeysBucket, ev)
}

// DecodeAdmin reads the admin principal a committed change wrote.
func (s *Store) DecodeAdmin(ev storage.Event) AdminPrincipal {
	return decodeEvent[AdminPrincipal](s, adminsBucket, ev)
}

func decodeEvent[T any, P listed[T]](s *Store, bucket []byte, ev storage.Event) T {
	_, id := Split(ev.Key)
	var v T
	if err := s.open(bucket, []byte(id), ev.Value, P(&v)); err != nil {
		P(&v).markTampered(id)
	}
	return v
}
