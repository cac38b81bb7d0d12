package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage"
)

// The master key a database is under is the one that made its stored key
// check value. A rotation (RotateMasterKey) replaces that value, in one
// transaction with a record of the rotation, and then moves every record
// to the new key. Every write is conditioned on the check value's version
// (fence), so that no replica writes under the old key once the switch is
// committed: a replica that had not seen it fails its write, reads the
// new check value and writes again under the new key. Replicas hold both
// keys throughout (keyring.Masters), so that they read records under
// either.

var (
	keyCheckMeta = key(metaBucket, string(keyCheckKey))
	macKeyMeta   = key(metaBucket, string(macKeyKey))
	// rotationMeta records an unfinished rotation (a Rotation's From and
	// To), from the switch until every record is under the new key.
	rotationKey  = []byte("master-key-rotation")
	rotationMeta = key(metaBucket, string(rotationKey))
	// keyIDMeta names the master key the database is under, and
	// retiredMeta (a JSON list) those it was under before, for messages
	// and to refuse going back to a retired key. Neither is secret.
	keyIDKey, retiredKey   = []byte("master-key-id"), []byte("retired-master-keys")
	keyIDMeta, retiredMeta = key(metaBucket, string(keyIDKey)), key(metaBucket, string(retiredKey))
)

// ErrMasterKeyMissing means the database is under a master key this
// process does not hold: another replica rotated it.
var ErrMasterKeyMissing = errors.New("the database was moved to a master key this broker does not hold (a rotation made on another replica): restart it with that key as --master-key-file")

// ErrRotationBlocked means a rotation cannot start or finish now; the
// message says why and what to do.
var ErrRotationBlocked = errors.New("the master-key rotation cannot go on")

// fence is the condition every write carries: the database is still
// under the key this process tags records and wraps keys with.
func (s *Store) fence() storage.Cond {
	return storage.VersionIs(keyCheckMeta, storage.Version(s.keyCheck.Load()))
}

// RefreshKeyCheck reads the stored key check value and follows it: from
// then on this process writes under the key that made it, or, if it does
// not hold that key, returns ErrMasterKeyMissing and reports KeyMissing.
// Callers are serialized, and each reads the latest value, so that the
// key and the version it is fenced on never go back to older ones.
func (s *Store) RefreshKeyCheck() error {
	s.followMu.Lock()
	defer s.followMu.Unlock()
	r, err := s.db.Get(ctx, keyCheckMeta)
	if errors.Is(err, storage.ErrNotFound) {
		// Written when the database was identified, never deleted: a
		// write fenced on its absence must not go through.
		s.keyMissing.Store(true)
		return fmt.Errorf("%w: the database's master-key check value is gone", ErrIntegrity)
	}
	if err != nil {
		return err
	}
	return s.followKeyCheck(r.Value, r.Version)
}

// FollowKeyCheck takes note of a committed change of the key check value
// (another replica's rotation), if ev is one (see RefreshKeyCheck). It
// returns whether ev was one.
func (s *Store) FollowKeyCheck(ev storage.Event) bool {
	if ev.Key != keyCheckMeta {
		return false
	}
	_ = s.RefreshKeyCheck() // KeyMissing tells
	return true
}

func (s *Store) followKeyCheck(check []byte, v storage.Version) error {
	k := s.masters.Verifying(check, s.id)
	if k == nil {
		s.keyMissing.Store(true)
		return ErrMasterKeyMissing
	}
	// The key first, then the version: a write fenced on the old version
	// but sealed under the new key fails and is made again, never the
	// other way round (see commit).
	s.masters.Use(k)
	s.keyCheck.Store(uint64(v))
	s.keyMissing.Store(false)
	return nil
}

// KeyMissing reports whether the database is under a master key this
// process does not hold, so that it can read nothing written since.
func (s *Store) KeyMissing() bool { return s.keyMissing.Load() }

// Rotation is a master-key rotation: the ids of the key the database was
// under and of the one it moves to, and what one RotateMasterKey call did.
type Rotation struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Accounts moved to fresh data keys, and other records tagged anew,
	// by this call; Tampered records failed their check under both keys
	// and were left as they were (they are not used).
	Accounts int `json:"-"`
	Records  int `json:"-"`
	Tampered int `json:"-"`
	// version is the stored record's.
	version storage.Version
}

// PendingRotation is the rotation the database is in the middle of, or
// nil.
func (s *Store) PendingRotation() (*Rotation, error) {
	rec, err := s.db.Get(ctx, rotationMeta)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	r := Rotation{version: rec.Version}
	if err := json.Unmarshal(rec.Value, &r); err != nil {
		return nil, fmt.Errorf("the stored master-key rotation record: %w", err)
	}
	return &r, nil
}

// RotateMasterKey moves the database to the master key to (held, with
// the one the database is under): it switches the key check value, with
// ev (if set) in the audit trail, so that every replica writes under to
// from then on, and then, in small compare-and-swap transactions while
// the broker serves, gives every account a fresh data key wrapped by to
// (its secrets and cached token sealed again: keyring.Masters.Reseal),
// re-wraps the MAC key, and tags every other record (token states, caller
// keys, admin principals, audit events) under to. It goes over the
// records again until a pass finds none left under the old key, and only
// then drops the record of the rotation. Interrupted at any point, the
// database stays readable with both keys, and calling it again finishes
// the rotation. It refuses to switch while a replica that does not hold
// to is running (see Announce), and to a key the database was under
// before. The replaced material is shredded.
func (s *Store) RotateMasterKey(to *keyring.MasterKey, ev *AuditEvent) (Rotation, error) {
	pending, err := s.PendingRotation()
	if err != nil {
		return Rotation{}, err
	}
	cur := s.masters.Current()
	switch {
	case pending != nil && pending.To != to.ID():
		return Rotation{}, fmt.Errorf("%w: a rotation from master key %s to %s has not finished; finish it first, with both of those keys configured", ErrRotationBlocked, pending.From, pending.To)
	case pending == nil && cur.ID() == to.ID() && len(s.masters.All()) == 1:
		return Rotation{}, fmt.Errorf("%w: this broker holds only master key %s, the one the database is under, so there is nothing to rotate to: restart every replica with the new key as --master-key-file and this one as --previous-master-key-file first", ErrRotationBlocked, cur.ID())
	case pending == nil && cur.ID() == to.ID():
		return Rotation{To: to.ID()}, nil // done before
	case pending == nil:
		if pending, err = s.switchKey(cur, to, ev); err != nil {
			return Rotation{}, err
		}
	}
	r := *pending
	for pass := 1; ; pass++ {
		before := r
		r.Tampered = 0 // counted anew by each pass
		if err := s.moveToCurrent(&r); err != nil {
			return r, err
		}
		if r.Accounts == before.Accounts && r.Records == before.Records {
			break // a pass that found nothing left under the old key
		}
		if pass == 3 {
			return r, fmt.Errorf("%w: records under the old master key %s keep appearing (a replica that has not followed the switch?); run the rotation again", ErrRotationBlocked, r.From)
		}
	}
	return r, s.commit(func() (txn, error) {
		got, err := s.PendingRotation()
		if err != nil || got == nil || got.From != r.From || got.To != r.To {
			return txn{}, err // another replica finished it (and maybe began another)
		}
		return ops(conds(storage.VersionIs(rotationMeta, got.version)), opOf(storage.Delete(rotationMeta)))
	})
}

// moveToCurrent moves what is not yet under the current key to it: the
// MAC key, the accounts, and the other records.
func (s *Store) moveToCurrent(r *Rotation) error {
	if err := s.rewrapMACKey(); err != nil {
		return fmt.Errorf("MAC key: %w", err)
	}
	if err := s.resealAccounts(r); err != nil {
		return err
	}
	for _, name := range dataBuckets {
		if !bytes.Equal(name, accountsBucket) {
			if err := s.retag(name, r); err != nil {
				return err
			}
		}
	}
	return nil
}

// switchKey makes to the database's key, with the record of the rotation
// from cur and ev, once every running replica holds to.
func (s *Store) switchKey(cur, to *keyring.MasterKey, ev *AuditEvent) (*Rotation, error) {
	if !s.masters.Holds(to.ID()) {
		return nil, fmt.Errorf("%w: this broker does not hold master key %s", ErrRotationBlocked, to.ID())
	}
	retired, err := s.RetiredKeys()
	if err != nil {
		return nil, err
	}
	if slices.Contains(retired, to.ID()) {
		return nil, fmt.Errorf("%w: the database was under master key %s before, and a rotation retired it: rotate to a new key", ErrRotationBlocked, to.ID())
	}
	lacking, err := s.replicasLacking(to.ID())
	if err != nil {
		return nil, err
	}
	if len(lacking) > 0 {
		return nil, fmt.Errorf("%w: %d running replica(s) do not hold the new master key %s (%s): restart every replica with it as --master-key-file and the current key as --previous-master-key-file first", ErrRotationBlocked, len(lacking), to.ID(), strings.Join(lacking, ", "))
	}
	check, err := to.KeyCheck(s.id)
	if err != nil {
		return nil, err
	}
	r := &Rotation{From: cur.ID(), To: to.ID()}
	record, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	retiredList, err := json.Marshal(append(retired, cur.ID()))
	if err != nil {
		return nil, err
	}
	bs := []built{
		opOf(storage.Put(keyCheckMeta, check)), opOf(storage.Put(rotationMeta, record)),
		opOf(storage.Put(keyIDMeta, []byte(to.ID()))), opOf(storage.Put(retiredMeta, retiredList)),
	}
	if ev != nil {
		e := *ev
		e.Detail = fmt.Sprintf("switched the database from master key %s to %s; moving every record to it", r.From, r.To)
		bs = append(bs, s.appendAudit(e))
	}
	// Not commit: a conflict on the fence means another replica switched.
	t, err := ops(conds(s.fence(), storage.VersionIs(rotationMeta, storage.Absent)), bs...)
	if err == nil {
		_, err = s.db.Txn(ctx, t.conds, t.ops)
	}
	if errors.Is(err, storage.ErrConflict) {
		return nil, fmt.Errorf("%w: another replica changed the master key at the same time; try again", ErrRotationBlocked)
	}
	if err != nil {
		return nil, err
	}
	if ev != nil {
		s.auditEvents.Add(1)
	}
	return r, s.RefreshKeyCheck()
}

// KeyID is the id of the master key the database is under, as recorded
// when it was identified or last rotated ("" if it predates the record).
func (s *Store) KeyID() (string, error) {
	id, err := s.meta(keyIDKey)
	return string(id), err
}

// RetiredKeys are the ids of the master keys rotations moved the database
// away from.
func (s *Store) RetiredKeys() ([]string, error) {
	raw, err := s.meta(retiredKey)
	if err != nil || raw == nil {
		return nil, err
	}
	var ids []string
	if err := json.Unmarshal(raw, &ids); err != nil {
		return nil, fmt.Errorf("the stored list of retired master keys: %w", err)
	}
	return ids, nil
}

// rewrapMACKey wraps the MAC key under the current key, if it is not yet.
func (s *Store) rewrapMACKey() error {
	return s.commit(func() (txn, error) {
		r, err := s.db.Get(ctx, macKeyMeta)
		if errors.Is(err, storage.ErrNotFound) || (err == nil && s.masters.UnderCurrent(r.Value)) {
			return txn{}, nil
		}
		if err != nil {
			return txn{}, err
		}
		rewrapped, err := s.masters.RewrapMACKey(r.Value)
		if err != nil {
			return txn{}, err
		}
		return ops(conds(storage.VersionIs(macKeyMeta, r.Version)), opOf(storage.Put(macKeyMeta, rewrapped).Shredding()))
	})
}

// rotationPage is how many records a rotation reads at a time.
const rotationPage = 256

// resealAccounts moves each account not yet under the current key, with
// its token state, to a fresh data key, one account a transaction.
func (s *Store) resealAccounts(r *Rotation) error {
	return s.eachPage(accountsBucket, func(records []storage.Record) error {
		for _, rec := range records {
			id := rec.Key[len(accountsBucket)+1:]
			moved, err := s.resealAccount(id)
			switch {
			case errors.Is(err, ErrIntegrity):
				r.Tampered++
			case errors.Is(err, ErrNotFound): // deleted meanwhile
			case err != nil:
				return fmt.Errorf("account %q: %w", id, err)
			case moved:
				r.Accounts++
			}
		}
		return nil
	})
}

// resealAccount moves one account and its token state to a fresh data key
// wrapped by the current key, unless both are under it already.
func (s *Store) resealAccount(id string) (moved bool, err error) {
	err = s.commit(func() (txn, error) {
		moved = false
		var a Account
		var t TokenState
		aRec, err := s.db.Get(ctx, key(accountsBucket, id))
		if err != nil {
			return txn{}, err
		}
		aData, aCurrent, err := s.masters.OpenRecord(accountsBucket, []byte(id), aRec.Value)
		if err == nil {
			err = decode(aData, &a)
		}
		if err != nil {
			return txn{}, err
		}
		tRec, err := s.db.Get(ctx, key(tokensBucket, id))
		tCurrent := true
		if err == nil {
			var tData []byte
			if tData, tCurrent, err = s.masters.OpenRecord(tokensBucket, []byte(id), tRec.Value); err == nil {
				err = decode(tData, &t)
			}
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			return txn{}, err
		}
		if aCurrent && tCurrent && s.masters.UnderCurrent(a.WrappedKey) {
			return txn{}, nil
		}
		if a.WrappedKey, err = s.masters.Reseal(id, a.WrappedKey, sealedValues(&a, &t)); err != nil {
			return txn{}, err
		}
		moved = true
		bs := []built{shredding(s.put(accountsBucket, id, a))}
		if tRec.Version != storage.Absent {
			bs = append(bs, shredding(s.put(tokensBucket, id, t)))
		}
		return ops(conds(storage.VersionIs(aRec.Key, aRec.Version), storage.VersionIs(key(tokensBucket, id), tRec.Version)), bs...)
	})
	return moved, err
}

// sealedValues are the sealed values of an account and its token state.
func sealedValues(a *Account, t *TokenState) []keyring.Sealed {
	var values []keyring.Sealed
	for i := range a.Secrets {
		values = append(values, keyring.Sealed{Field: keyring.FieldClientSecret, Value: &a.Secrets[i].Sealed})
	}
	if len(a.SealedSecret) > 0 {
		values = append(values, keyring.Sealed{Field: keyring.FieldClientSecret, Value: &a.SealedSecret})
	}
	if len(t.SealedToken) > 0 {
		values = append(values, keyring.Sealed{Field: keyring.FieldAccessToken, Value: &t.SealedToken})
	}
	if len(t.SealedRefreshToken) > 0 {
		values = append(values, keyring.Sealed{Field: keyring.FieldRefreshToken, Value: &t.SealedRefreshToken})
	}
	return values
}

// retag tags the records of one kind that are not under the current key
// anew, as many a transaction as the engine takes.
func (s *Store) retag(kind []byte, r *Rotation) error {
	batch := s.db.Limits().MaxOps - 1 // and the fence
	return s.eachPage(kind, func(records []storage.Record) error {
		var stale []storage.Record
		for _, rec := range records {
			_, current, err := s.masters.OpenRecord(kind, []byte(rec.Key[len(kind)+1:]), rec.Value)
			switch {
			case errors.Is(err, ErrIntegrity):
				r.Tampered++
			case err != nil:
				return err
			case !current:
				stale = append(stale, rec)
			}
		}
		for len(stale) > 0 {
			n := min(batch, len(stale))
			done, err := s.retagRecords(kind, stale[:n])
			if err != nil {
				return err
			}
			r.Records += done
			stale = stale[n:]
		}
		return nil
	})
}

// retagRecords tags records of one kind anew under the current key, in
// one transaction, reading them again if another writer changed one
// first. It returns how many it tagged.
func (s *Store) retagRecords(kind []byte, records []storage.Record) (int, error) {
	fresh := false
	n := 0
	err := s.commit(func() (txn, error) {
		if fresh {
			var err error
			if records, err = s.reread(records); err != nil {
				return txn{}, err
			}
		}
		fresh = true
		var cs []storage.Cond
		var bs []built
		for _, rec := range records {
			data, current, err := s.masters.OpenRecord(kind, []byte(rec.Key[len(kind)+1:]), rec.Value)
			if err != nil || current {
				continue // tampered records stay as they are
			}
			if data, err = s.rewrapApps(kind, data); err != nil {
				return txn{}, err
			}
			cs = append(cs, storage.VersionIs(rec.Key, rec.Version))
			bs = append(bs, opOf(storage.Put(rec.Key, s.masters.SealRecord(kind, []byte(rec.Key[len(kind)+1:]), data))))
		}
		n = len(bs)
		return ops(cs, bs...)
	})
	return n, err
}

// rewrapApps moves the data key of the app a connect link or a sign-in
// holds (see SignInApp) to the current master key, in a record's data.
func (s *Store) rewrapApps(kind, data []byte) ([]byte, error) {
	var app *SignInApp
	var v any
	switch {
	case bytes.Equal(kind, connectSessionsBucket):
		c := &ConnectSession{}
		v = c
		if err := decode(data, c); err != nil {
			return nil, err
		}
		app = c.App
	case bytes.Equal(kind, authorizationsBucket):
		a := &Authorization{}
		v = a
		if err := decode(data, a); err != nil {
			return nil, err
		}
		app = &a.App
	default:
		return data, nil
	}
	if app == nil || len(app.WrappedKey) == 0 || s.masters.UnderCurrent(app.WrappedKey) {
		return data, nil
	}
	if err := s.rewrapApp(app); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// reread reads records again; those deleted meanwhile are left out.
func (s *Store) reread(records []storage.Record) ([]storage.Record, error) {
	out := make([]storage.Record, 0, len(records))
	for _, rec := range records {
		r, err := s.db.Get(ctx, rec.Key)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// eachPage calls fn with every record of a kind, a page at a time.
func (s *Store) eachPage(kind []byte, fn func([]storage.Record) error) error {
	r := storage.Range{Prefix: key(kind, ""), Limit: rotationPage}
	for {
		p, err := s.db.List(ctx, r)
		if err != nil {
			return err
		}
		if err := fn(p.Records); err != nil || !p.More {
			return err
		}
		r.After = p.Records[len(p.Records)-1].Key
	}
}

// Announcement is what a replica announces of itself (see Announce).
type Announcement struct {
	Name string   `json:"name"`
	Keys []string `json:"keys"`
}

// Announce tells the other replicas sharing the engine, for as long as
// this process is alive and in touch with it, which master keys it holds,
// so that a rotation to a key one of them lacks is refused. A replica
// announces before it checks its keys against the database, so that no
// rotation slips between the two. On an engine of one process (bbolt) it
// does nothing.
func (s *Store) Announce(c context.Context, masters *keyring.Masters) error {
	a, ok := s.db.(storage.Announcer)
	if !ok {
		return nil
	}
	host, _ := os.Hostname()
	me := Announcement{Name: fmt.Sprintf("%s pid %d", host, os.Getpid())}
	for _, k := range masters.All() {
		me.Keys = append(me.Keys, k.ID())
	}
	value, err := json.Marshal(me)
	if err != nil {
		return err
	}
	return a.Announce(c, value)
}

// KeepAnnouncing keeps the announcement up (again on a new lease, after a
// lost one) until c ends, reporting failures to log.
func (s *Store) KeepAnnouncing(c context.Context, log func(error)) {
	if _, ok := s.db.(storage.Announcer); !ok {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if err := s.Announce(c, s.masters); err != nil && c.Err() == nil {
			log(err)
		}
		select {
		case <-c.Done():
			return
		case <-tick.C:
		}
	}
}

// replicasLacking names the running replicas that do not hold the key id.
func (s *Store) replicasLacking(id string) ([]string, error) {
	a, ok := s.db.(storage.Announcer)
	if !ok {
		return nil, nil
	}
	values, err := a.Announced(ctx)
	if err != nil {
		return nil, err
	}
	var lacking []string
	for _, v := range values {
		var r Announcement
		if err := json.Unmarshal(v, &r); err != nil || !slices.Contains(r.Keys, id) {
			lacking = append(lacking, r.Name)
		}
	}
	return lacking, nil
}
