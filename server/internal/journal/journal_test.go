package journal

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/credbroker/credbroker/server/internal/keyring"
)

func macKey(t *testing.T) *keyring.MACKey {
	t.Helper()
	master, err := keyring.ParseMasterKey("q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=")
	if err != nil {
		t.Fatal(err)
	}
	mac, _, err := master.NewMACKey()
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

func records(from, n int) [][]byte {
	var out [][]byte
	for i := from; i < from+n; i++ {
		out = append(out, fmt.Appendf(nil, "record %d %s", i, bytes.Repeat([]byte{'x'}, i%50)))
	}
	return out
}

func recover(t *testing.T, dir string, mac *keyring.MACKey) *Recovered {
	t.Helper()
	j, err := Open(dir, mac, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	r, err := j.Recover()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// What was appended is recovered by the next process, in order, across
// segments that filled up; segments cut and recycled are not; and a
// recycled segment's old records never come back.
func TestAppendRecoverRecycle(t *testing.T) {
	dir, mac := t.TempDir(), macKey(t)
	j, err := Open(dir, mac, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 { // about 7 KB: two segments
		if err := j.Append(records(i*10, 10)); err != nil {
			t.Fatal(err)
		}
	}
	cut, err := j.Cut()
	if err != nil || len(cut) != 2 {
		t.Fatalf("Cut: %d segments, %v", len(cut), err)
	}
	for _, s := range cut {
		if err := j.Recycle(s); err != nil { // the first becomes the spare, over its old records
			t.Fatal(err)
		}
	}
	want := records(100, 5)
	if err := j.Append(want); err != nil { // into the recycled segment, if it was taken
		t.Fatal(err)
	}
	// A crash: the journal is not closed.
	r := recover(t, dir, mac)
	if !slices.EqualFunc(r.Records, want, bytes.Equal) || len(r.Unreadable) > 0 {
		t.Fatalf("recovered %d records (%q...), unreadable %v; want the 5 appended after the cut", len(r.Records), r.Records[:min(2, len(r.Records))], r.Unreadable)
	}
	if err := r.Done(); err != nil {
		t.Fatal(err)
	}
	if r := recover(t, dir, mac); len(r.Records) != 0 {
		t.Fatalf("recovered again after Done: %d records", len(r.Records))
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the empty journal's directory is left: %v", err)
	}
}

// A torn last write, a record changed on disk, and a record made under
// another database's MAC key end a segment's readable records, and are
// reported; nothing after them is taken.
func TestRecoverStopsAtWhatIsNotAuthentic(t *testing.T) {
	for name, damage := range map[string]func(data []byte, second int) []byte{
		"torn write": func(data []byte, second int) []byte {
			return append(data[:second+20], make([]byte, len(data)-second-20)...)
		},
		"changed": func(data []byte, second int) []byte { data[second+headSize+2] ^= 1; return data },
	} {
		t.Run(name, func(t *testing.T) {
			dir, mac := t.TempDir(), macKey(t)
			j, err := Open(dir, mac, 4096)
			if err != nil {
				t.Fatal(err)
			}
			recs := records(0, 3)
			if err := j.Append(recs[:1]); err != nil {
				t.Fatal(err)
			}
			if err := j.Append(recs[1:]); err != nil {
				t.Fatal(err)
			}
			path := j.cur.path
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			second := headSize + len(recs[0]) + macSize
			if err := os.WriteFile(path, damage(data, second), 0o600); err != nil {
				t.Fatal(err)
			}
			r := recover(t, dir, mac)
			if len(r.Records) != 1 || !bytes.Equal(r.Records[0], recs[0]) || len(r.Unreadable) != 1 {
				t.Fatalf("recovered %q, unreadable %v; want the first record and one report", r.Records, r.Unreadable)
			}
		})
	}
	t.Run("another database's key", func(t *testing.T) {
		dir := t.TempDir()
		j, err := Open(dir, macKey(t), 4096)
		if err != nil {
			t.Fatal(err)
		}
		if err := j.Append(records(0, 3)); err != nil {
			t.Fatal(err)
		}
		if r := recover(t, dir, macKey(t)); len(r.Records) != 0 || len(r.Unreadable) != 1 {
			t.Fatalf("recovered %d records under another key, unreadable %v", len(r.Records), r.Unreadable)
		}
	})
}

// Records too large for a segment are refused, not split.
func TestAppendRefusesOversizedRecords(t *testing.T) {
	j, err := Open(t.TempDir(), macKey(t), 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.Append([][]byte{make([]byte, 5000)}); err == nil {
		t.Fatal("a record larger than a segment was appended")
	}
	if err := j.Append([][]byte{{}}); err == nil {
		t.Fatal("an empty record was appended")
	}
	if names, _ := filepath.Glob(filepath.Join(j.dir, "*")); len(names) > 1 {
		t.Fatalf("files left: %v", names)
	}
}
