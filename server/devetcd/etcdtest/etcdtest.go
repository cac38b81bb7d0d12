// Package etcdtest runs real etcd clusters for tests, on loopback ports,
// with their data in the test's temporary directory: members inside the
// test process (Start), or as processes of `credbroker dev-etcd`
// (StartProcesses), which a test can kill as a crash would. Members can be
// stopped and started again on their data.
package etcdtest

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/credbroker/credbroker/server/devetcd"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string // credbroker, for members run as processes
	members []*member
}

type member struct {
	cfg devetcd.Member

	mu   sync.Mutex
	etcd *embed.Etcd // in the test process; nil while stopped
	cmd  *exec.Cmd   // or a process; nil while stopped
	// closed is closed once a stopped member has released its ports and
	// files.
	closed chan struct{}
}

// Start starts a cluster of n members in the test process and waits until
// they serve; the test's cleanup stops it.
func Start(t testing.TB, n int) *Cluster { return start(t, "", n) }

// StartProcesses starts a cluster of n members, each a process of the
// credbroker binary bin (its dev-etcd command).
func StartProcesses(t testing.TB, bin string, n int) *Cluster { return start(t, bin, n) }

func start(t testing.TB, bin string, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: bin}
	var cluster []string
	for i := range n {
		m := devetcd.Member{Name: fmt.Sprintf("m%d", i), Dir: t.TempDir(), ClientAddr: FreeAddr(t), PeerAddr: FreeAddr(t), Fast: true,
			LogLevel: "fatal"} // in the test process, members log an error for each listener they close
		cluster = append(cluster, m.Name+"="+m.PeerAddr)
		c.members = append(c.members, &member{cfg: m})
	}
	for _, m := range c.members {
		m.cfg.Cluster = strings.Join(cluster, ",")
	}
	t.Cleanup(c.stopAll)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range c.members {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// FreeAddr is a loopback address free to listen on, for a process the
// test starts later. Its port is below the kernel's range of ephemeral
// ports (32768 and up by default), which other tests' listeners on port 0
// and outgoing connections take theirs from, so that none of them takes it
// meanwhile; and it is never handed out twice in one test binary, so that
// a member stopped and restarted on its ports does not find another
// test's process on them.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		if _, taken := handedOut.LoadOrStore(port, true); taken {
			continue
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	t.Fatal("no free loopback port below the ephemeral range")
	return ""
}

// handedOut holds the ports FreeAddr has returned (and tried).
var handedOut sync.Map

// start starts member i and waits until it serves.
func (c *Cluster) start(i int) error {
	m := c.members[i]
	if c.bin == "" {
		e, err := devetcd.Start(m.cfg)
		m.mu.Lock()
		m.etcd = e
		m.mu.Unlock()
		return err
	}
	cmd := exec.Command(c.bin, "dev-etcd", "--name", m.cfg.Name, "--data-dir", m.cfg.Dir, "--client", m.cfg.ClientAddr,
		"--peer", m.cfg.PeerAddr, "--cluster", m.cfg.Cluster, "--fast")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	m.mu.Lock()
	m.cmd = cmd
	m.mu.Unlock()
	// It prints one line once it serves.
	if !bufio.NewScanner(out).Scan() {
		return fmt.Errorf("etcd member %s exited before serving: %v", m.cfg.Name, cmd.Wait())
	}
	return nil
}

// Endpoints are the members' client URLs, stopped ones included.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.cfg.ClientURL())
	}
	return out
}

// Stop stops member i at once, as a crash would (it keeps its data). A
// process is killed (SIGKILL). A member in the test process stops its raft
// node and closes its listeners; its clients' connections close in the
// background (they wait for clients' streams up to etcd's request
// timeout).
func (c *Cluster) Stop(i int) {
	m := c.members[i]
	m.mu.Lock()
	e, cmd := m.etcd, m.cmd
	m.etcd, m.cmd = nil, nil
	m.mu.Unlock()
	switch {
	case cmd != nil:
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	case e != nil:
		e.Server.HardStop()
		for _, l := range e.Clients {
			l.Close()
		}
		for _, l := range e.Peers {
			l.Close()
		}
		m.closed = make(chan struct{})
		go func() {
			e.Close()
			close(m.closed)
		}()
	}
}

// Restart starts member i again on its data.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.wait(i)
	if err := c.start(i); err != nil {
		c.t.Fatal(err)
	}
}

// wait waits until stopped member i has closed.
func (c *Cluster) wait(i int) {
	if closed := c.members[i].closed; closed != nil {
		<-closed
	}
}

func (c *Cluster) stopAll() {
	for i := range c.members {
		c.Stop(i)
	}
	for i := range c.members {
		c.wait(i)
	}
}
