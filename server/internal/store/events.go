package store

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// Kinds of credential events.
const (
	EventAccountLinked        = "account_linked"
	EventAccountDeleted       = "account_deleted"
	EventAccountStateChanged  = "account_state_changed"
	EventSecretAdded          = "secret_added"
	EventSecretRemoved        = "secret_removed"
	EventSecretRejected       = "secret_rejected"
	EventSecretExpiring       = "secret_expiring"
	EventSecretExpired        = "secret_expired"
	EventCallerKeyCreated     = "caller_key_created"
	EventCallerKeyRevoked     = "caller_key_revoked"
	EventIntegrityCheckFailed = "integrity_check_failed"
)

// BrokerPrincipal is who makes the changes the broker makes on its own
// (account states, expiry warnings).
const BrokerPrincipal = "credbroker"

// Event is a credential event: a change that the services and people who
// depend on an account (or a caller key) act on. It holds what an admin
// sees in GetAccount, never a secret or a token.
//
// An event is derived from the change it describes, inside the change's
// transaction, from the records as they were and as they become (see
// accountEvents, tokenStateEvents, callerKeyEvents): it is stored in the
// outbox with the change, so that a crash never loses one or invents one,
// and a change that another writer had already made (a lost
// compare-and-swap) makes none. The relay then moves it into the event
// log, where it gets its sequence number (see RelayEvents).
type Event struct {
	Version int `json:"v"`
	// ID is random: what receivers de-duplicate by.
	ID string `json:"id"`
	// Seq is the event's place in the event log (0 in the outbox).
	Seq  uint64    `json:"seq,omitempty"`
	Kind string    `json:"kind"`
	Time time.Time `json:"time"`
	// Account or CallerKey is the id of what the event is about.
	Account   string `json:"account,omitempty"`
	CallerKey string `json:"caller_key,omitempty"`
	// Principal made the change (BrokerPrincipal for the broker's own).
	Principal string `json:"principal,omitempty"`
	// Grantees are the principals the account granted when the change was
	// made: the callers, besides admins, who may see the event.
	Grantees []string `json:"grantees,omitempty"`
	// OldState and NewState: account_state_changed.
	OldState string `json:"old_state,omitempty"`
	NewState string `json:"new_state,omitempty"`
	// Failure: why the account is in NewState, or why a secret was
	// rejected.
	Failure *Failure `json:"failure,omitempty"`
	// Secret: the secret a secret_* event is about (not secret_expiring,
	// which is about the account's credentials).
	Secret *EventSecret `json:"secret,omitempty"`
	// ExpireTime: secret_expiring, when the account's credentials expire.
	ExpireTime time.Time `json:"expire_time,omitzero"`
}

func (e *Event) version() int { return e.Version }

// markTampered makes an event whose record failed its check an
// integrity_check_failed event, with an id of its place in the log.
func (e *Event) markTampered(key string) {
	*e = Event{ID: "tampered-event-" + key, Kind: EventIntegrityCheckFailed, Principal: BrokerPrincipal}
}

// EventSecret is what an event says of a secret: never its value.
type EventSecret struct {
	ID         string    `json:"id"`
	CreateTime time.Time `json:"create_time,omitzero"`
	ExpireTime time.Time `json:"expire_time,omitzero"`
}

func eventSecret(s Secret) *EventSecret {
	return &EventSecret{ID: s.ID, CreateTime: s.CreateTime, ExpireTime: s.ExpireTime}
}

// newEvent is an event of a kind, made by the change that ev records (at
// its time, by its principal); or by the broker now, if ev is nil.
func newEvent(kind string, ev *AuditEvent) Event {
	id := make([]byte, 16)
	rand.Read(id)
	e := Event{Version: recordVersion, ID: hex.EncodeToString(id), Kind: kind, Time: time.Now().UTC(), Principal: BrokerPrincipal}
	if ev != nil {
		e.Time, e.Principal = ev.Time.UTC(), ev.Principal
	}
	return e
}

// accountEvents are the events of a change of an account from before to
// after (nil: it did not exist, or no longer does).
func accountEvents(before, after *Account, ev AuditEvent) []Event {
	var evs []Event
	add := func(kind string, id string, s *Secret) {
		e := newEvent(kind, &ev)
		e.Account, e.Grantees = id, grantees(cmp.Or(after, before))
		if s != nil {
			e.Secret = eventSecret(*s)
		}
		evs = append(evs, e)
	}
	switch {
	case before == nil && after != nil:
		add(EventAccountLinked, after.ID, nil)
	case before != nil && after == nil:
		add(EventAccountDeleted, before.ID, nil)
	case before != nil && len(before.SealedSecret) == 0:
		// (A record from before the list of secrets gets its one secret
		// moved into the list: nothing is added.)
		for i, s := range after.Secrets {
			if !hasSecret(before.Secrets, s.ID) {
				add(EventSecretAdded, after.ID, &after.Secrets[i])
			}
		}
		for i, s := range before.Secrets {
			if !hasSecret(after.Secrets, s.ID) {
				add(EventSecretRemoved, after.ID, &before.Secrets[i])
			}
		}
	}
	return evs
}

func grantees(a *Account) []string {
	var ps []string
	for _, g := range a.Grants {
		ps = append(ps, g.Principal)
	}
	return ps
}

func hasSecret(secrets []Secret, id string) bool {
	for _, s := range secrets {
		if s.ID == id {
			return true
		}
	}
	return false
}

// tokenStateEvents are the events of a change of account a's token state
// from before to after, which ev (if set) records: a change of state, a
// secret the provider rejected, an expiry warning (at most daily, see
// tokens.Manager.checkExpiry), a secret whose expire time passed.
func tokenStateEvents(a Account, before, after TokenState, ev *AuditEvent) []Event {
	var evs []Event
	add := func(e Event) { e.Account, e.Grantees = a.ID, grantees(&a); evs = append(evs, e) }
	for _, s := range a.Secrets {
		// Once, when it is first rejected: not at every recheck.
		was, is := before.SecretUse[s.ID].Rejected, after.SecretUse[s.ID].Rejected
		if is != nil && was == nil {
			e := newEvent(EventSecretRejected, ev)
			e.Secret, e.Failure = eventSecret(s), new(*is)
			add(e)
		}
	}
	if after.State != before.State && after.State != "" && (before.State != "" || after.State != "active") {
		e := newEvent(EventAccountStateChanged, ev)
		e.OldState, e.NewState = before.State, after.State
		if f := after.LastError; f != nil {
			e.Failure = new(*f)
		}
		add(e)
	}
	if !after.ExpiryWarned.IsZero() && !after.ExpiryWarned.Equal(before.ExpiryWarned) {
		e := newEvent(EventSecretExpiring, ev)
		e.ExpireTime = CredentialsExpire(a.Secrets, after.SecretUse)
		add(e)
	}
	for _, s := range a.Secrets {
		if after.ExpiredNoted[s.ID] && !before.ExpiredNoted[s.ID] {
			e := newEvent(EventSecretExpired, ev)
			e.Secret = eventSecret(s)
			add(e)
		}
	}
	return evs
}

// CredentialsExpire is when an account with these secrets runs out of
// credentials unless a secret is added: the latest expire time of the
// secrets the provider has not rejected; zero if one of them never
// expires, or none is left.
func CredentialsExpire(secrets []Secret, use map[string]SecretUse) time.Time {
	var last time.Time
	for _, s := range secrets {
		if use[s.ID].Rejected != nil {
			continue
		}
		if s.ExpireTime.IsZero() {
			return time.Time{}
		}
		if s.ExpireTime.After(last) {
			last = s.ExpireTime
		}
	}
	return last
}

// callerKeyEvents are the events of a change of a caller key from before
// to after (nil: it did not exist, or no longer does).
func callerKeyEvents(before, after *CallerKey, ev AuditEvent) []Event {
	kind := ""
	switch {
	case before == nil && after != nil:
		kind = EventCallerKeyCreated
	case before != nil && before.RevokeTime.IsZero() && !before.Tampered && (after == nil || !after.RevokeTime.IsZero()):
		kind = EventCallerKeyRevoked
	default:
		return nil
	}
	e := newEvent(kind, &ev)
	e.CallerKey = cmp.Or(after, before).ID
	return []Event{e}
}

// cloneTokenState is t with maps of its own, to compare with after a
// change.
func cloneTokenState(t TokenState) TokenState {
	t.SecretUse, t.ExpiredNoted = maps.Clone(t.SecretUse), maps.Clone(t.ExpiredNoted)
	return t
}

// outbox is the ops that store evs, the events of one change, in the
// outbox, each under its time, its place among them and its id, so that
// the relay moves them into the log in the order they were made.
func (s *Store) outbox(evs []Event) []built {
	bs := make([]built, len(evs))
	for i, e := range evs {
		bs[i] = s.put(outboxBucket, fmt.Sprintf("%016x-%04x-%s", uint64(e.Time.UnixNano()), i, e.ID), e)
	}
	return bs
}

// eventKey is the key of the event at seq in the event log: keys sort
// like sequence numbers.
func eventKey(seq uint64) string { return fmt.Sprintf("%016x", seq) }

// relayBatch is how many events one relay transaction moves: two ops and
// a condition each, within etcd's 128.
const relayBatch = 40

// RelayEvents moves the oldest events of the outbox into the event log,
// numbering them after the last one there, in one transaction that holds
// only while held does (the relay's lock, on an engine replicas share),
// and returns how many it moved. Like every write it is fenced (see
// commit), so that no event is sealed under a master key the database
// has left. An event whose outbox record fails its integrity check is
// dropped, and reported as an error once the others are moved.
func (s *Store) RelayEvents(held []storage.Cond) (int, error) {
	var moved int
	var bad error
	err := s.commit(func() (txn, error) {
		moved, bad = 0, nil
		p, err := s.db.List(ctx, storage.Range{Prefix: key(outboxBucket, ""), Limit: relayBatch})
		if err != nil || len(p.Records) == 0 {
			return txn{}, err
		}
		last, err := s.lastEventSeq()
		if err != nil {
			return txn{}, err
		}
		cs := append([]storage.Cond(nil), held...)
		var bs []built
		for _, r := range p.Records {
			_, id := Split(r.Key)
			// Moved only if still there: a relay that read the outbox
			// before another moved it must not log its events twice.
			cs = append(cs, storage.VersionIs(r.Key, r.Version))
			bs = append(bs, opOf(storage.Delete(r.Key)))
			var e Event
			if err := s.open(outboxBucket, []byte(id), r.Value, &e); err != nil {
				bad = errors.Join(bad, fmt.Errorf("outbox record %s: %w", id, err))
				continue
			}
			last++
			e.Seq = last
			cs = append(cs, storage.VersionIs(key(eventsBucket, eventKey(last)), storage.Absent))
			bs = append(bs, s.put(eventsBucket, eventKey(last), e))
		}
		moved = len(p.Records)
		return ops(cs, bs...)
	})
	if err != nil {
		return 0, err
	}
	return moved, bad
}

// lastEventSeq is the sequence number of the newest event in the log, 0
// if there is none. (Pruning keeps the newest, so numbers never go back.)
func (s *Store) lastEventSeq() (uint64, error) {
	p, err := s.db.List(ctx, storage.Range{Prefix: key(eventsBucket, ""), Limit: 1, Reverse: true})
	if err != nil || len(p.Records) == 0 {
		return 0, err
	}
	_, k := Split(p.Records[0].Key)
	return strconv.ParseUint(k, 16, 64)
}

// EventLog is the span of the event log: the sequence numbers of its
// oldest and newest events (0 and 0 if it is empty).
func (s *Store) EventLog() (oldest, newest uint64, err error) {
	p, err := s.db.List(ctx, storage.Range{Prefix: key(eventsBucket, ""), Limit: 1})
	if err != nil || len(p.Records) == 0 {
		return 0, 0, err
	}
	_, k := Split(p.Records[0].Key)
	if oldest, err = strconv.ParseUint(k, 16, 64); err != nil {
		return 0, 0, err
	}
	newest, err = s.lastEventSeq()
	return oldest, newest, err
}

// Events returns up to limit events of the log after sequence number
// after, in order, and whether more follow. An event whose record fails
// its integrity check comes as an integrity_check_failed event about
// nothing (see markTampered).
func (s *Store) Events(after uint64, limit int) ([]Event, bool, error) {
	p, err := s.db.List(ctx, storage.Range{Prefix: key(eventsBucket, ""), After: key(eventsBucket, eventKey(after)), Limit: limit})
	if err != nil {
		return nil, false, err
	}
	evs := make([]Event, len(p.Records))
	for i, r := range p.Records {
		_, k := Split(r.Key)
		if err := s.open(eventsBucket, []byte(k), r.Value, &evs[i]); err != nil {
			evs[i].markTampered(k)
		}
		evs[i].Seq, _ = strconv.ParseUint(k, 16, 64)
	}
	return evs, p.More, nil
}

// PruneEvents deletes up to limit events of the log made before cutoff,
// oldest first, never the newest, and returns how many it deleted.
func (s *Store) PruneEvents(cutoff time.Time, limit int) (int, error) {
	_, newest, err := s.EventLog()
	if err != nil || newest == 0 {
		return 0, err
	}
	evs, _, err := s.Events(0, limit)
	if err != nil {
		return 0, err
	}
	var doomed []storage.Op
	for _, e := range evs {
		if e.Seq == newest || !e.Time.Before(cutoff) {
			break
		}
		doomed = append(doomed, storage.Delete(key(eventsBucket, eventKey(e.Seq))))
	}
	deleted := 0
	for _, chunk := range s.db.Limits().Chunks(doomed) {
		if _, err := s.db.Txn(ctx, nil, chunk); err != nil {
			return deleted, err
		}
		deleted += len(chunk)
	}
	return deleted, nil
}

// Lock waits until this process holds the named lock (of the event
// relay, of webhook deliveries), on an engine that replicas share, or ctx
// ends; on an engine of one process it holds nothing and returns at once.
func (s *Store) Lock(ctx context.Context, name string) (storage.Lock, error) {
	locker, ok := s.db.(storage.Locker)
	if !ok {
		return storage.Lock{}, nil
	}
	return locker.Lock(ctx, key(metaBucket, "lock-"+name))
}

// Holds is the condition a lock's holder writes under, if any.
func Holds(l storage.Lock) []storage.Cond {
	if l.Held.Key == "" {
		return nil
	}
	return []storage.Cond{l.Held}
}

// EventMatches says whether an event passes filters of kinds and account
// ids (empty: any).
func EventMatches(e Event, kinds, accounts []string) bool {
	return (len(kinds) == 0 || slices.Contains(kinds, e.Kind)) && (len(accounts) == 0 || slices.Contains(accounts, e.Account))
}

// NoteTampered makes an integrity_check_failed event about a record that
// failed its check, named as the API names it ("accounts/{id}",
// "callerKeys/{id}"; others are not the events' business), once per
// stored value of the record: every replica that reads it, at every
// start, notes it, and the first makes the event.
func (s *Store) NoteTampered(name string) error {
	e := newEvent(EventIntegrityCheckFailed, nil)
	var k string
	if id, ok := strings.CutPrefix(name, "accounts/"); ok {
		e.Account, k = id, key(accountsBucket, id)
	} else if id, ok := strings.CutPrefix(name, "callerKeys/"); ok {
		e.CallerKey, k = id, key(callerKeysBucket, id)
	} else {
		return nil
	}
	noted := key(metaBucket, "tampered-noted/"+k)
	return s.commit(func() (txn, error) {
		r, err := s.db.Get(ctx, k)
		if errors.Is(err, storage.ErrNotFound) {
			return txn{}, nil
		}
		if err != nil {
			return txn{}, err
		}
		stamp := binary.BigEndian.AppendUint64(nil, uint64(r.Version))
		m, err := s.db.Get(ctx, noted)
		if err != nil && !errors.Is(err, storage.ErrNotFound) {
			return txn{}, err
		}
		if bytes.Equal(m.Value, stamp) {
			return txn{}, nil // noted already
		}
		return ops(conds(storage.VersionIs(k, r.Version), storage.VersionIs(noted, m.Version)),
			append([]built{opOf(storage.Put(noted, stamp))}, s.outbox([]Event{e})...)...)
	})
}
