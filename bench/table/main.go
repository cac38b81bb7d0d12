// Command table writes the README's performance table from the figures
// make bench measured (bench/results.tsv), between the README's markers,
// so that the table always shows the last measured figures. With -check it
// changes nothing and fails if the README's table is not the file's.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
)

const (
	begin = "<!-- performance table: written by make bench from bench/results.tsv -->\n"
	end   = "<!-- end of performance table -->\n"
)

func main() {
	results := flag.String("results", "bench/results.tsv", "the figures make bench measured")
	readme := flag.String("readme", "README.md", "the README to write the table into")
	check := flag.Bool("check", false, "fail if the README's table is not the figures', changing nothing")
	flag.Parse()
	if err := run(*results, *readme, *check); err != nil {
		log.Fatal(err)
	}
}

func run(resultsPath, readmePath string, check bool) error {
	tsv, err := os.ReadFile(resultsPath)
	if err != nil {
		return err
	}
	table, err := render(string(tsv))
	if err != nil {
		return fmt.Errorf("%s: %w", resultsPath, err)
	}
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		return err
	}
	updated, err := replace(readme, table)
	if err != nil {
		return fmt.Errorf("%s: %w", readmePath, err)
	}
	if check {
		if !bytes.Equal(updated, readme) {
			return fmt.Errorf("%s's performance table is not %s's figures: run make bench, or go run ./bench/table", readmePath, resultsPath)
		}
		return nil
	}
	return os.WriteFile(readmePath, updated, 0o644)
}

// render makes the Markdown table of the figures: lines of tab-separated
// id, figure, measured, target and "met"/"NOT met"; lines starting with
// "# machine" say where they were measured.
func render(tsv string) (string, error) {
	var b strings.Builder
	rows := 0
	for i, line := range strings.Split(strings.TrimRight(tsv, "\n"), "\n") {
		if machine, ok := strings.CutPrefix(line, "# machine\t"); ok {
			fmt.Fprintf(&b, "Measured on %s.\n\n| figure | measured | target | |\n|---|---|---|---|\n", machine)
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			return "", fmt.Errorf("line %d: %d fields, want 5", i+1, len(f))
		}
		if rows == 0 && b.Len() == 0 {
			return "", errors.New("no # machine line before the figures")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4])
		rows++
	}
	if rows == 0 {
		return "", errors.New("no figures")
	}
	return b.String(), nil
}

// replace puts table between the README's markers.
func replace(readme []byte, table string) ([]byte, error) {
	s := string(readme)
	i := strings.Index(s, begin)
	j := strings.Index(s, end)
	if i < 0 || j < i {
		return nil, errors.New("no performance table markers")
	}
	return []byte(s[:i+len(begin)] + table + s[j:]), nil
}
