package storage

import (
	"fmt"
	"testing"
)

func TestChunks(t *testing.T) {
	l := Limits{MaxOps: 3, MaxBytes: 10}
	op := func(i, size int) Op { return Put(fmt.Sprintf("k/%d", i), make([]byte, size-3)) } // keys are 3 bytes
	for _, tc := range []struct {
		name  string
		ops   []Op
		sizes []int
	}{
		{"none", nil, nil},
		{"by count", []Op{op(1, 3), op(2, 3), op(3, 3), op(4, 3)}, []int{3, 1}},
		{"by bytes", []Op{op(1, 6), op(2, 6), op(3, 4)}, []int{1, 2}},
		{"one too large alone", []Op{op(1, 30), op(2, 3)}, []int{1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chunks := l.Chunks(tc.ops)
			var sizes []int
			n := 0
			for _, c := range chunks {
				sizes = append(sizes, len(c))
				n += len(c)
			}
			if fmt.Sprint(sizes) != fmt.Sprint(tc.sizes) || n != len(tc.ops) {
				t.Fatalf("chunks of %v, want %v", sizes, tc.sizes)
			}
		})
	}
}

func TestPrefixEnd(t *testing.T) {
	for in, want := range map[string]string{"a/": "a0", "a/\xff": "a0", "": "", "\xff\xff": "", "ab": "ac"} {
		if got := PrefixEnd(in); got != want {
			t.Errorf("PrefixEnd(%q) = %q, want %q", in, got, want)
		}
	}
}
