package keyring

import (
	"fmt"
	"sync/atomic"
)

// Masters are the master keys a broker holds: the one its database is
// under (current), which wraps new keys and tags the records written, and,
// during a rotation, the other one. Both open what they wrapped (a wrapped
// key names its master key) and both verify records' tags, so that
// replicas holding the two keys serve throughout a rotation, whichever key
// each record is under yet.
type Masters struct {
	keys []*MasterKey
	// records are keys' record keys for the database (see Bind).
	records []*RecordKey
	// current indexes keys.
	current atomic.Int32
}

// NewMasters holds keys (distinct ones), the first current until Use
// says otherwise.
func NewMasters(keys ...*MasterKey) *Masters { return &Masters{keys: keys} }

// Bind derives the keys' record keys for the database with the given id;
// records are sealed and opened only after it.
func (m *Masters) Bind(databaseID []byte) error {
	records := make([]*RecordKey, len(m.keys))
	for i, k := range m.keys {
		var err error
		if records[i], err = k.RecordKey(databaseID); err != nil {
			return err
		}
	}
	m.records = records
	return nil
}

// All are the held keys.
func (m *Masters) All() []*MasterKey { return m.keys }

// Current is the key the database is under.
func (m *Masters) Current() *MasterKey { return m.keys[m.current.Load()] }

// Use makes k, one of the held keys, the current one.
func (m *Masters) Use(k *MasterKey) {
	for i, h := range m.keys {
		if h.ID() == k.ID() {
			m.current.Store(int32(i))
		}
	}
}

// Holds reports whether the key with the given id is held.
func (m *Masters) Holds(id string) bool {
	for _, k := range m.keys {
		if k.ID() == id {
			return true
		}
	}
	return false
}

// Verifying is the held key that made check (see MasterKey.KeyCheck) for
// the database with the given id, or nil.
func (m *Masters) Verifying(check, databaseID []byte) *MasterKey {
	for _, k := range m.keys {
		if k.VerifyKeyCheck(check, databaseID) == nil {
			return k
		}
	}
	return nil
}

// unwrap opens a wrapped key with the master key it names, or, if it was
// wrapped by an earlier version, which did not name it, with whichever
// held key opens it.
func (m *Masters) unwrap(wrapped, ad []byte) ([]byte, error) {
	by := WrappedBy(wrapped)
	for _, k := range m.keys {
		if by == "" || by == k.ID() {
			if raw, err := k.unwrap(wrapped, ad); err == nil || by != "" {
				return raw, err
			}
		}
	}
	if by != "" {
		return nil, fmt.Errorf("%w: wrapped by master key %s, which this broker does not hold", ErrDecrypt, by)
	}
	return nil, ErrDecrypt
}

// NewDataKey makes a fresh data key for an account, wrapped by the
// current key (see MasterKey.NewDataKey).
func (m *Masters) NewDataKey(accountID string) (*DataKey, []byte, error) {
	return m.Current().NewDataKey(accountID)
}

// UnwrapDataKey opens an account's wrapped data key.
func (m *Masters) UnwrapDataKey(accountID string, wrapped []byte) (*DataKey, error) {
	raw, err := m.unwrap(wrapped, additionalData("data-key", accountID, ""))
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(raw)
	if err != nil {
		return nil, err
	}
	return &DataKey{aead: aead, accountID: accountID}, nil
}

// UnwrapMACKey opens the wrapped MAC key.
func (m *Masters) UnwrapMACKey(wrapped []byte) (*MACKey, error) {
	raw, err := m.unwrap(wrapped, additionalData("mac-key", "", ""))
	if err != nil {
		return nil, err
	}
	return &MACKey{key: raw}, nil
}

// UnderCurrent reports whether a wrapped key is wrapped by the current
// key.
func (m *Masters) UnderCurrent(wrapped []byte) bool {
	return WrappedBy(wrapped) == m.Current().ID()
}

// RewrapDataKey wraps an account's data key under the current key; the
// data key, and what it sealed, stay the same. It is for a new account's
// key that was wrapped just before the database changed keys; an account
// already stored moves to a fresh data key (Reseal).
func (m *Masters) RewrapDataKey(accountID string, wrapped []byte) ([]byte, error) {
	return m.rewrap(wrapped, additionalData("data-key", accountID, ""))
}

// RewrapMACKey wraps the MAC key under the current key: its hashes stay
// valid.
func (m *Masters) RewrapMACKey(wrapped []byte) ([]byte, error) {
	return m.rewrap(wrapped, additionalData("mac-key", "", ""))
}

func (m *Masters) rewrap(wrapped, ad []byte) ([]byte, error) {
	raw, err := m.unwrap(wrapped, ad)
	if err != nil {
		return nil, err
	}
	return m.Current().wrap(raw, ad)
}

// Sealed is one sealed field of an account's record, for Reseal: Value
// points at the stored ciphertext.
type Sealed struct {
	Field Field
	Value *[]byte
}

// Reseal moves an account to a fresh data key wrapped by the current
// key: it opens each value with the account's data key, seals it again
// with the new one, and returns the new key, wrapped. The values are
// replaced in place only if every one opened. Afterwards neither the old
// data key nor the master key that wrapped it opens anything of the
// account, so that someone holding an old master key and an old copy of
// the database cannot read what the account holds later.
func (m *Masters) Reseal(accountID string, wrapped []byte, values []Sealed) ([]byte, error) {
	old, err := m.UnwrapDataKey(accountID, wrapped)
	if err != nil {
		return nil, err
	}
	fresh, rewrapped, err := m.NewDataKey(accountID)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(values))
	for i, v := range values {
		plain, err := old.Open(v.Field, *v.Value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v.Field, err)
		}
		if out[i], err = fresh.Seal(v.Field, plain); err != nil {
			return nil, err
		}
	}
	for i, v := range values {
		*v.Value = out[i]
	}
	return rewrapped, nil
}

// SealRecord lays out a record for storage, tagged under the current
// key's record key (see RecordKey.Seal).
func (m *Masters) SealRecord(kind, key, data []byte) []byte {
	return m.records[m.current.Load()].Seal(kind, key, data)
}

// OpenRecord checks a stored record's tag under each held key's record
// key, the current one first, and returns its data, or ErrIntegrity.
// current says whether its tag is the current key's.
func (m *Masters) OpenRecord(kind, key, stored []byte) (data []byte, current bool, err error) {
	cur := m.current.Load()
	if data, err = m.records[cur].Open(kind, key, stored); err == nil {
		return data, true, nil
	}
	for i, r := range m.records {
		if int32(i) != cur {
			if data, oerr := r.Open(kind, key, stored); oerr == nil {
				return data, false, nil
			}
		}
	}
	return nil, false, err
}
