// Package devetcd runs one etcd member inside a process (etcd's embed
// package) on loopback, for trying a cluster of brokers on one machine
// (`credbroker dev-etcd`) and for tests. It is not for production, where
// etcd runs as its own service with TLS between members and clients.
package devetcd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/credbroker/credbroker/internal/loopback"
)

// Member describes one member of a development cluster.
type Member struct {
	// Name names the member in Cluster.
	Name string
	// Dir holds its data; a member restarted on its Dir rejoins its
	// cluster.
	Dir string
	// ClientAddr and PeerAddr are loopback host:port addresses, for
	// clients (the brokers) and for the other members.
	ClientAddr, PeerAddr string
	// Cluster is every member's Name=PeerAddr, comma-separated; empty
	// for a cluster of this member alone.
	Cluster string
	// Fast makes heartbeats 50 ms and elections 500 ms (etcd's defaults:
	// 100 ms and 1 s), so that a test's failover takes seconds.
	Fast bool
	// LogLevel is etcd's own: debug, info, warn, error, panic or fatal.
	// Default "warn".
	LogLevel string
}

// ReadyTimeout bounds the wait for a member to join its cluster.
const ReadyTimeout = 30 * time.Second

// Start starts the member and waits until it serves clients (a member of
// a cluster serves once a quorum of the cluster has started).
func Start(m Member) (*embed.Etcd, error) {
	cfg, err := m.config()
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd member %s: %w", m.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd member %s: %w", m.Name, err)
	case <-time.After(ReadyTimeout):
		e.Close()
		return nil, fmt.Errorf("etcd member %s did not join its cluster within %s: are a quorum of its members started?", m.Name, ReadyTimeout)
	}
}

// ClientURL is the URL brokers reach the member at.
func (m Member) ClientURL() string { return "http://" + m.ClientAddr }

func (m Member) config() (*embed.Config, error) {
	if m.Name == "" || m.Dir == "" {
		return nil, errors.New("a member needs a name and a data directory")
	}
	client, err := loopbackURL("client", m.ClientAddr)
	if err != nil {
		return nil, err
	}
	peer, err := loopbackURL("peer", m.PeerAddr)
	if err != nil {
		return nil, err
	}
	cluster := m.Cluster
	if cluster == "" {
		cluster = m.Name + "=" + m.PeerAddr
	}
	var initial []string
	for _, entry := range strings.Split(cluster, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(entry), "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("cluster entry %q: want NAME=HOST:PORT", entry)
		}
		u, err := loopbackURL("peer of "+name, addr)
		if err != nil {
			return nil, err
		}
		initial = append(initial, name+"="+u.String())
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = m.Name, m.Dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = strings.Join(initial, ",")
	cfg.InitialClusterToken = "credbroker-dev"
	cfg.LogLevel = m.LogLevel
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warn"
	}
	cfg.LogOutputs = []string{"stderr"}
	if m.Fast {
		cfg.TickMs, cfg.ElectionMs = 50, 500
	}
	return cfg, nil
}

// loopbackURL is the http URL of a loopback host:port.
func loopbackURL(what, addr string) (url.URL, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || port == "0" {
		return url.URL{}, fmt.Errorf("%s address %q: want a loopback HOST:PORT with a port", what, addr)
	}
	if !loopback.Addr(addr) {
		return url.URL{}, fmt.Errorf("%s address %q is not a loopback address: a development member serves plaintext, without authentication", what, addr)
	}
	return url.URL{Scheme: "http", Host: net.JoinHostPort(host, port)}, nil
}
