// Package datadir owns the broker's data directory on disk: its database
// file and its master-key file (generated there for local use when no key
// is configured). It opens the directory for the running broker, and it
// holds the tools that work on the directory while the broker is stopped:
// restoring a backup (and checking and saving backup files), and rekeying
// to a new master key.
package datadir

import (
	"log/slog"
	"time"
)

// Config says where the data directory is and how to open it. Zero fields
// take the values of DefaultConfig.
type Config struct {
	// DataDir holds the database; it is created (or restricted) to mode 0700.
	DataDir string
	// MasterKeyFile and MasterKey (the key's text itself) are the two ways
	// to give the master key; set at most one. With neither, a key is
	// generated into DataDir/master.key for local use.
	MasterKeyFile string
	MasterKey     string
	// LockTimeout is how long to wait for the database lock before giving up.
	LockTimeout time.Duration

	Logger *slog.Logger
}

// DefaultConfig is ./credbroker-data, a lock timeout of a second and the
// default logger.
func DefaultConfig() Config {
	return Config{
		DataDir:     "./credbroker-data",
		LockTimeout: time.Second,
		Logger:      slog.Default(),
	}
}

// WithDefaults is cfg with the values of DefaultConfig in its unset
// (empty, zero or negative) fields.
func WithDefaults(cfg Config) Config {
	d := DefaultConfig()
	if cfg.DataDir == "" {
		cfg.DataDir = d.DataDir
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = d.LockTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = d.Logger
	}
	return cfg
}
