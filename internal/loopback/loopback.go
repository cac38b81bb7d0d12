// Package loopback says whether a host or an address stays on this
// machine: localhost or a loopback IP address. It is the one test behind
// every "plaintext on loopback only" rule: the broker's listeners, the
// provider endpoints it sends credentials to over http, and the client
// sending a caller key without TLS.
package loopback

import "net"

// Host reports whether host (a name or an IP address, without a port) is
// localhost or a loopback address.
func Host(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Addr reports whether addr ("host:port") names a loopback host; an
// address without a port is not one.
func Addr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err == nil && Host(host)
}
