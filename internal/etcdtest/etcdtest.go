// Package etcdtest runs real etcd clusters inside a test process (etcd's
// embed package), on loopback ports, with their data in the test's
// temporary directory; members can be stopped and started again.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	mu      sync.Mutex
	members []*member
}

type member struct {
	cfg  *embed.Config
	etcd *embed.Etcd // nil while stopped
	// closed is closed once a stopped member has released its ports and
	// files.
	closed chan struct{}
}

// Start starts a cluster of n members and waits until it has a leader;
// the test's cleanup stops it.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	var initial []string
	for i := range n {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = t.TempDir()
		cfg.LogLevel = "fatal" // members log an error for each listener they close
		cfg.LogOutputs = []string{"stderr"}
		peer, client := freeURL(t), freeURL(t)
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		// Short heartbeats and elections, so that failover tests take
		// seconds, not minutes.
		cfg.TickMs, cfg.ElectionMs = 50, 500
		initial = append(initial, cfg.Name+"="+peer.String())
		c.members = append(c.members, &member{cfg: cfg})
	}
	for _, m := range c.members {
		m.cfg.InitialCluster = strings.Join(initial, ",")
		m.cfg.InitialClusterToken = "credbroker-test"
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range c.members {
		wg.Go(func() { errs[i] = c.start(i) })
	}
	wg.Wait()
	t.Cleanup(c.stopAll)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func freeURL(t testing.TB) url.URL {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}
}

// start starts member i and waits until it serves.
func (c *Cluster) start(i int) error {
	m := c.members[i]
	e, err := embed.StartEtcd(m.cfg)
	if err != nil {
		return fmt.Errorf("start etcd member %d: %w", i, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("etcd member %d did not become ready within 30s", i)
	}
	c.mu.Lock()
	m.etcd = e
	c.mu.Unlock()
	return nil
}

// Endpoints are the members' client addresses, stopped ones included.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.cfg.AdvertiseClientUrls[0].String())
	}
	return out
}

// Stop stops member i at once, as a crash would (it keeps its data): its
// raft node stops, and its listeners close in the background (they wait
// for clients' streams up to etcd's request timeout).
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	m := c.members[i]
	e := m.etcd
	m.etcd = nil
	c.mu.Unlock()
	if e == nil {
		return
	}
	e.Server.HardStop()
	m.closed = make(chan struct{})
	go func() {
		e.Close()
		close(m.closed)
	}()
}

// Restart starts member i again on its data.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.wait(i)
	c.members[i].cfg.ClusterState = embed.ClusterStateFlagExisting
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
