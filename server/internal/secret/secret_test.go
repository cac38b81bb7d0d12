package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestStringNeverPrints(t *testing.T) {
	const canary = "canary-secret-7f3a"
	s := New(canary)
	wrapped := struct{ S String }{s}

	var logBuf bytes.Buffer
	slog.New(slog.NewJSONHandler(&logBuf, nil)).Info("msg", "s", s, "w", wrapped)
	j, err := json.Marshal(wrapped)
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"%v": fmt.Sprintf("%v", s), "%+v": fmt.Sprintf("%+v", wrapped), "%#v": fmt.Sprintf("%#v", wrapped),
		"%s": fmt.Sprintf("%s", s), "%q": fmt.Sprintf("%q", s), "%x": fmt.Sprintf("%x", s), "%d": fmt.Sprintf("%d", s),
		"json": string(j), "slog": logBuf.String(),
	}
	for name, out := range outputs {
		if out == "" || !strings.Contains(out, redacted) {
			t.Errorf("%s: got %q, want it to contain %s", name, out, redacted)
		}
		if strings.Contains(out, canary) || strings.Contains(out, fmt.Sprintf("%x", canary)) {
			t.Errorf("%s leaks the secret: %q", name, out)
		}
	}
	if s.Reveal() != canary {
		t.Fatalf("Reveal() = %q", s.Reveal())
	}
}
