package main

import "testing"

// The README's performance table is the one make bench last measured.
func TestREADMETableIsCurrent(t *testing.T) {
	if err := run("../results.tsv", "../../README.md", true); err != nil {
		t.Fatal(err)
	}
}

func TestRenderRefusesMalformedResults(t *testing.T) {
	for name, tsv := range map[string]string{
		"empty":         "",
		"no machine":    "a\tb\tc\td\te\n",
		"short line":    "# machine\tx\na\tb\n",
		"machine alone": "# machine\tx\n",
	} {
		if _, err := render(tsv); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
	if got, err := render("# machine\tAMD EPYC, 2 cores, go1.25\nid\tGetToken CPU\t1.2x\t<= 1.30x\tmet\n"); err != nil || got != "Measured on AMD EPYC, 2 cores, go1.25.\n\n| figure | measured | target | |\n|---|---|---|---|\n| GetToken CPU | 1.2x | <= 1.30x | met |\n" {
		t.Fatalf("render: %q, %v", got, err)
	}
}
