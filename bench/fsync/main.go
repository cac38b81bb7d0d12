// Command fsync measures one durable write as the audit journal makes it:
// 4 KiB written with O_DSYNC over blocks allocated beforehand, in a file
// under -dir (on the disk being measured). It prints the median wall time
// and the mean CPU time of a write, in microseconds: "wall_us cpu_us".
// With -gap it pauses between writes, as a lone caller's writes are: on
// this machine's virtual disk a write after a pause takes about twice as
// long as one right after another.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

func main() {
	dir := flag.String("dir", ".", "directory on the disk to measure")
	n := flag.Int("n", 2000, "writes")
	sz := flag.Int("size", 4096, "bytes a write")
	gap := flag.Duration("gap", 0, "pause between writes")
	flag.Parse()
	path := filepath.Join(*dir, "fsync-probe")
	defer os.Remove(path)
	size := *sz
	if err := os.WriteFile(path, make([]byte, *n*size), 0o600); err != nil {
		log.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DSYNC, 0)
	if err != nil {
		log.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, size)
	walls := make([]time.Duration, *n)
	cpu0 := cpuTime()
	for i := range walls {
		start := time.Now()
		if _, err := f.WriteAt(buf, int64(i*size)); err != nil {
			log.Fatal(err)
		}
		walls[i] = time.Since(start)
		time.Sleep(*gap)
	}
	cpu := cpuTime() - cpu0
	slices.Sort(walls)
	fmt.Printf("%.1f %.1f\n", float64(walls[len(walls)/2].Nanoseconds())/1e3, float64(cpu.Nanoseconds())/1e3/float64(*n))
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		log.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
