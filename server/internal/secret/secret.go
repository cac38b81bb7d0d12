// Package secret holds credentials in a type that cannot be printed, logged
// or marshalled by accident: every formatting path prints [REDACTED].
package secret

import (
	"fmt"
	"log/slog"
)

const redacted = "[REDACTED]"

// String is a secret string. The zero value is the empty secret.
type String struct{ s string }

// New wraps s.
func New(s string) String { return String{s: s} }

// Reveal returns the secret itself. Call it only where the value must leave
// the process on purpose (an upstream request, GetToken's answer, sealing).
func (s String) Reveal() string { return s.s }

// IsZero reports whether the secret is empty.
func (s String) IsZero() bool { return s.s == "" }

func (String) String() string               { return redacted }
func (String) GoString() string             { return redacted }
func (String) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (String) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (String) MarshalText() ([]byte, error) { return []byte(redacted), nil }
func (String) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(redacted)) }
