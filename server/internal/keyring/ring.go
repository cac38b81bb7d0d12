package keyring

// Keyring seals and opens accounts' values and makes keyed hashes. It
// holds the master keys and the MAC key, which never leave memory.
type Keyring struct {
	masters *Masters
	mac     *MACKey
}

// New returns the keyring of the master keys and the MAC key they
// unwrapped.
func New(masters *Masters, mac *MACKey) *Keyring { return &Keyring{masters: masters, mac: mac} }

// NewAccountKey makes a new account's data key, to seal its first values
// with, and returns it with its wrapped form, which is what gets stored.
func (k *Keyring) NewAccountKey(accountID string) (*DataKey, []byte, error) {
	return k.masters.NewDataKey(accountID)
}

// Seal encrypts one field of an account under its data key (wrapped).
func (k *Keyring) Seal(accountID string, wrapped []byte, field Field, plaintext []byte) ([]byte, error) {
	key, err := k.masters.UnwrapDataKey(accountID, wrapped)
	if err != nil {
		return nil, err
	}
	return key.Seal(field, plaintext)
}

// Open decrypts one field of an account with its data key (wrapped).
func (k *Keyring) Open(accountID string, wrapped []byte, field Field, sealed []byte) ([]byte, error) {
	key, err := k.masters.UnwrapDataKey(accountID, wrapped)
	if err != nil {
		return nil, err
	}
	return key.Open(field, sealed)
}

// Sum is the keyed hash of data for one purpose (see MACKey.Sum).
func (k *Keyring) Sum(purpose, data string) []byte { return k.mac.Sum(purpose, data) }
