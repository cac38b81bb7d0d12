// Package keyring is the one place where the broker encrypts, decrypts
// and authenticates: everything sealed or opened passes a Keyring, and
// every stored record is tagged and checked by a RecordKey.
//
// Each account has its own AES-256-GCM data key; data keys are stored only
// wrapped by the master key. Every ciphertext is bound (as AES-GCM
// additional data) to the account and the field it belongs to, so a
// ciphertext moved to another record or field fails to decrypt instead of
// revealing another account's secret. Whole stored records are
// authenticated too, by a RecordKey derived from the master key and the
// database's id. Keyed hashes (caller keys, token fingerprints) come from
// a MAC key stored wrapped by the master key.
package keyring

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
)

// KeySize is the size of master and data keys: AES-256.
const KeySize = 32

// format is the first byte of every sealed value, so that the layout can
// change later without guessing.
const format byte = 1

// ErrDecrypt means a ciphertext did not authenticate: a wrong key, or data
// that was altered or moved to another account or field.
var ErrDecrypt = errors.New("keyring: ciphertext does not authenticate")

// ErrWrongMasterKey means the master key is not the one the store was created with.
var ErrWrongMasterKey = errors.New("the master key does not match the one this data directory was created with")

// MasterKey wraps and unwraps data keys. It never leaves memory.
type MasterKey struct {
	aead cipher.AEAD
	raw  []byte // for deriving record keys
	id   [idSize]byte
}

// idSize is the length of a master key's id (see MasterKey.ID).
const idSize = 8

// wrappedFormat is the first byte of a key wrapped by a master key: then
// come the master key's id and the sealed key. Keys wrapped by earlier
// versions start with format instead, without the id.
const wrappedFormat byte = 2

// ID names the master key, so that what it wrapped says which key opens
// it (a rotation has two at once): 8 bytes of a hash of the key, which
// reveal nothing of it.
func (m *MasterKey) ID() string { return hex.EncodeToString(m.id[:]) }

// WrappedBy is the id of the master key that wrapped a key, or "" if the
// key was wrapped by an earlier version, which did not record it.
func WrappedBy(wrapped []byte) string {
	if len(wrapped) < 1+idSize || wrapped[0] != wrappedFormat {
		return ""
	}
	return hex.EncodeToString(wrapped[1 : 1+idSize])
}

// wrap seals a key under m, with m's id in front.
func (m *MasterKey) wrap(raw, ad []byte) ([]byte, error) {
	sealed, err := sealWith(m.aead, raw, ad)
	if err != nil {
		return nil, err
	}
	return append(append([]byte{wrappedFormat}, m.id[:]...), sealed...), nil
}

// unwrap opens a key that m wrapped, in either layout.
func (m *MasterKey) unwrap(wrapped, ad []byte) ([]byte, error) {
	if len(wrapped) > 0 && wrapped[0] == wrappedFormat {
		if id := WrappedBy(wrapped); id != m.ID() {
			return nil, fmt.Errorf("%w: wrapped by master key %s, not %s", ErrDecrypt, id, m.ID())
		}
		wrapped = wrapped[1+idSize:]
	}
	return openWith(m.aead, wrapped, ad)
}

// DataKey seals and opens one account's fields.
type DataKey struct {
	aead      cipher.AEAD
	accountID string
}

// ParseMasterKey reads a 32-byte key written as base64 (standard or URL
// alphabet, padded or not) or hex. Surrounding white space is ignored.
func ParseMasterKey(text string) (*MasterKey, error) {
	text = strings.TrimSpace(text)
	raw, err := decodeKey(text)
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(raw)
	if err != nil {
		return nil, err
	}
	m := &MasterKey{aead: aead, raw: raw}
	sum := sha256.Sum256(append([]byte("credbroker/v1 master key id\x00"), raw...))
	copy(m.id[:], sum[:])
	return m, nil
}

func decodeKey(text string) ([]byte, error) {
	if len(text) == 2*KeySize {
		if raw, err := hex.DecodeString(text); err == nil {
			return raw, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if raw, err := enc.DecodeString(text); err == nil && len(raw) == KeySize {
			return raw, nil
		}
	}
	// Say nothing about the text itself: it may be a real key with a typo.
	return nil, fmt.Errorf("master key must be %d random bytes encoded as base64 or hex", KeySize)
}

// GenerateMasterKey returns a new random master key in the text form that
// ParseMasterKey reads.
func GenerateMasterKey() (string, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(raw), nil
}

// NewDataKey makes a fresh data key for an account and returns it with its
// wrapped form, which is what gets stored.
func (m *MasterKey) NewDataKey(accountID string) (*DataKey, []byte, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, nil, err
	}
	aead, err := newAEAD(raw)
	if err != nil {
		return nil, nil, err
	}
	wrapped, err := m.wrap(raw, additionalData("data-key", accountID, ""))
	if err != nil {
		return nil, nil, err
	}
	return &DataKey{aead: aead, accountID: accountID}, wrapped, nil
}

// UnwrapDataKey opens an account's data key, wrapped by m.
func (m *MasterKey) UnwrapDataKey(accountID string, wrapped []byte) (*DataKey, error) {
	return NewMasters(m).UnwrapDataKey(accountID, wrapped)
}

// MACKey computes keyed hashes: of caller keys, so that the store never
// holds a key, and of issued tokens, so that the audit trail can name a
// token without revealing it. It is random, stored wrapped by the master
// key, and never leaves memory.
type MACKey struct {
	key  []byte
	macs sync.Pool // see borrowHMAC
}

// NewMACKey makes a fresh MAC key and returns it with its wrapped form,
// which is what gets stored.
func (m *MasterKey) NewMACKey() (*MACKey, []byte, error) {
	raw := make([]byte, KeySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, nil, err
	}
	wrapped, err := m.wrap(raw, additionalData("mac-key", "", ""))
	if err != nil {
		return nil, nil, err
	}
	return &MACKey{key: raw}, wrapped, nil
}

// UnwrapMACKey opens a MAC key wrapped by m.
func (m *MasterKey) UnwrapMACKey(wrapped []byte) (*MACKey, error) {
	return NewMasters(m).UnwrapMACKey(wrapped)
}

// Sum is HMAC-SHA256 of data, bound to purpose so that a hash made for one
// use can never stand in for another.
func (k *MACKey) Sum(purpose, data string) []byte { return k.appendSum(nil, purpose, nil, data) }

// AppendSum appends Sum(purpose, data) to dst: the audit journal tags
// every frame it writes, and a copy of each as a string was garbage.
func (k *MACKey) AppendSum(dst []byte, purpose string, data []byte) []byte {
	return k.appendSum(dst, purpose, data, "")
}

// appendSum appends the sum of purpose and data, the bytes then the text
// (one of them empty).
func (k *MACKey) appendSum(dst []byte, purpose string, data []byte, text string) []byte {
	h := borrowHMAC(&k.macs, k.key)
	defer returnHMAC(&k.macs, h)
	h.writeString(purpose)
	h.Write(zero)
	h.Write(data)
	h.writeString(text)
	return h.Sum(dst)
}

var zero = []byte{0}

// hmacState is an HMAC-SHA256 state and the buffer that writes strings
// and lengths to it (each converted on its own was an allocation).
type hmacState struct {
	hash.Hash
	scratch []byte
}

func (h *hmacState) writeString(s string) {
	h.scratch = append(h.scratch[:0], s...)
	h.Write(h.scratch)
}

func (h *hmacState) writeLength(n int) {
	h.scratch = binary.BigEndian.AppendUint32(h.scratch[:0], uint32(n))
	h.Write(h.scratch)
}

// borrowHMAC is an HMAC-SHA256 state under key from pool, or a new one;
// give it back with returnHMAC. A new state costs two SHA-256 blocks and
// five allocations, and one is needed for every caller key proved and
// every stored record read (a page of 100 accounts, 100,000 at a start).
func borrowHMAC(pool *sync.Pool, key []byte) *hmacState {
	if h, ok := pool.Get().(*hmacState); ok {
		return h
	}
	return &hmacState{Hash: hmac.New(sha256.New, key)}
}

// returnHMAC resets h, wipes what it wrote through its buffer (caller
// keys among it), and puts it back in pool.
func returnHMAC(pool *sync.Pool, h *hmacState) {
	h.Reset()
	clear(h.scratch[:cap(h.scratch)])
	pool.Put(h)
}

// RecordKey authenticates whole stored records, so that a record edited,
// moved to another key or kind, or copied from another database is
// detected. It is derived from the master key and the database's own
// random id, so it changes with either, and it never leaves memory.
type RecordKey struct {
	key  []byte
	macs sync.Pool // see borrowHMAC
}

// RecordKey derives the record key of the database with the given id.
func (m *MasterKey) RecordKey(databaseID []byte) (*RecordKey, error) {
	key, err := hkdf.Key(sha256.New, m.raw, databaseID, "credbroker/v1 record integrity", KeySize)
	if err != nil {
		return nil, err
	}
	return &RecordKey{key: key}, nil
}

// Tag is HMAC-SHA256 of a record: its kind (the bucket it is stored in),
// its key and its value, each length-prefixed so that no two records
// share an input.
func (k *RecordKey) Tag(kind, key, value []byte) []byte { return k.appendTag(nil, kind, key, value) }

// appendTag appends the Tag of a record to dst.
func (k *RecordKey) appendTag(dst, kind, key, value []byte) []byte {
	h := borrowHMAC(&k.macs, k.key)
	defer returnHMAC(&k.macs, h)
	h.writeLength(len(kind))
	h.Write(kind)
	h.writeLength(len(key))
	h.Write(key)
	h.Write(value)
	return h.Sum(dst)
}

// KeyCheck returns a value, stored beside the data, by which VerifyKeyCheck
// later tells whether a master key is the one the database with the given
// id was created with. Being bound to the id, it also says, under the
// master key, that the database's records are tagged (see RecordKey): a
// database cannot be passed off as one of an earlier version without a
// check value of that version. It reveals nothing about the key.
func (m *MasterKey) KeyCheck(databaseID []byte) ([]byte, error) {
	return sealWith(m.aead, []byte(keyCheckText), additionalData("key-check-v2", hex.EncodeToString(databaseID), ""))
}

// VerifyKeyCheck returns ErrWrongMasterKey unless check was made by
// KeyCheck under this same master key for this database id.
func (m *MasterKey) VerifyKeyCheck(check, databaseID []byte) error {
	if _, err := openWith(m.aead, check, additionalData("key-check-v2", hex.EncodeToString(databaseID), "")); err != nil {
		return ErrWrongMasterKey
	}
	return nil
}

// VerifyLegacyKeyCheck returns ErrWrongMasterKey unless check is the check
// value of a database of an earlier version (before records were tagged)
// made under this master key.
func (m *MasterKey) VerifyLegacyKeyCheck(check []byte) error {
	if _, err := openWith(m.aead, check, additionalData("key-check", "", "")); err != nil {
		return ErrWrongMasterKey
	}
	return nil
}

// keyCheckText is what check values seal.
const keyCheckText = "credbroker master key check"

// Field names what a sealed value is: its ciphertext is bound to it.
type Field string

// Fields of accounts that are sealed.
const (
	FieldClientSecret Field = "client_secret" // also an API key
	FieldAccessToken  Field = "access_token"
	FieldRefreshToken Field = "refresh_token"
)

// Seal encrypts one field of the key's account.
func (k *DataKey) Seal(field Field, plaintext []byte) ([]byte, error) {
	return sealWith(k.aead, plaintext, additionalData("field", k.accountID, string(field)))
}

// Open decrypts one field of the key's account.
func (k *DataKey) Open(field Field, sealed []byte) ([]byte, error) {
	return openWith(k.aead, sealed, additionalData("field", k.accountID, string(field)))
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// additionalData binds a ciphertext to what it is. NUL separators keep
// ("a", "b-c") and ("a-b", "c") apart; account ids cannot contain NUL.
func additionalData(purpose, accountID, field string) []byte {
	return []byte("credbroker/v1\x00" + purpose + "\x00" + accountID + "\x00" + field)
}

// sealWith lays out format byte || nonce || ciphertext+tag.
func sealWith(aead cipher.AEAD, plaintext, ad []byte) ([]byte, error) {
	out := make([]byte, 1+aead.NonceSize(), 1+aead.NonceSize()+len(plaintext)+aead.Overhead())
	out[0] = format
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return aead.Seal(out, out[1:], plaintext, ad), nil
}

func openWith(aead cipher.AEAD, sealed, ad []byte) ([]byte, error) {
	n := aead.NonceSize()
	if len(sealed) < 1+n+aead.Overhead() || sealed[0] != format {
		return nil, ErrDecrypt
	}
	plaintext, err := aead.Open(nil, sealed[1:1+n], sealed[1+n:], ad)
	if err != nil {
		return nil, ErrDecrypt
	}
	return plaintext, nil
}

// ErrIntegrity means a stored record failed its integrity check: it was
// changed outside the broker, or copied from another database.
var ErrIntegrity = errors.New("the stored record failed its integrity check (it was changed outside the broker, or copied from another database), so it is not used")

// taggedRecord is the first byte of every stored record; then come its
// tag (tagSize bytes) and its data. Records of earlier versions are bare
// JSON, starting with '{'.
const (
	taggedRecord byte = 1
	tagSize           = sha256.Size
)

// Seal lays out a record of kind under key for storage, with its tag.
func (k *RecordKey) Seal(kind, key, data []byte) []byte {
	out := make([]byte, 0, 1+tagSize+len(data))
	out = append(out, taggedRecord)
	out = k.appendTag(out, kind, key, data)
	return append(out, data...)
}

// Open checks a stored record's tag and returns its data, or
// ErrIntegrity.
func (k *RecordKey) Open(kind, key, stored []byte) ([]byte, error) {
	if len(stored) < 1+tagSize || stored[0] != taggedRecord {
		return nil, fmt.Errorf("%s %q: %w", kind, key, ErrIntegrity)
	}
	data := stored[1+tagSize:]
	var tag [tagSize]byte
	if !hmac.Equal(stored[1:1+tagSize], k.appendTag(tag[:0], kind, key, data)) {
		return nil, fmt.Errorf("%s %q: %w", kind, key, ErrIntegrity)
	}
	return data, nil
}

// Untagged reports whether a stored record has the layout of an earlier
// version, before records were tagged: bare JSON.
func Untagged(stored []byte) bool { return len(stored) > 0 && stored[0] == '{' }
