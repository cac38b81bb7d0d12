package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func rotateMasterKey(args []string, stdout, stderr io.Writer) error {
	s := &session{name: "rotate-master-key", stdout: stdout, stderr: stderr}
	fs := remoteFlagSet("rotate-master-key", "credbroker rotate-master-key [flags]", stderr, `Moves a running broker's database (a cluster's, on etcd) from the master key
it is under to a new one, while every replica goes on serving
(MasterKeyService/RotateMasterKey). Needs an admin identity.

 1. Make a new key: head -c 32 /dev/urandom | base64 > new.key
 2. Restart every replica, one at a time, with the new key as
    --master-key-file and the current one as --previous-master-key-file
    (or CREDBROKER_MASTER_KEY and CREDBROKER_PREVIOUS_MASTER_KEY). They
    go on under the current key, reading what either key wrapped.
 3. Run this command against any replica. It is refused, changing
    nothing, while a running replica does not hold the new key. It
    switches the database to the new key, then gives every account a fresh
    data key under it and tags every record anew. If it is interrupted,
    run it again: it finishes the job.
 4. Restart the replicas without --previous-master-key-file. Until the
    rotation has finished, a replica started without it refuses to start.

Backups taken before still open with the old key only.`, &s.remote)
	if err := parseRemote(fs, args); err != nil {
		return err
	}
	c, err := s.remote.dial()
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	resp, err := credbrokerv1.NewMasterKeyServiceClient(c.Conn()).RotateMasterKey(ctx, &credbrokerv1.RotateMasterKeyRequest{})
	if err = s.explain(err); err != nil {
		return err
	}
	if resp.GetFromKeyId() == "" {
		fmt.Fprintf(stdout, "the database is already under master key %s; nothing to do\n", resp.GetToKeyId())
		return nil
	}
	fmt.Fprintf(stdout, "the database moved from master key %s to %s: this run gave %d accounts fresh data keys and tagged %d other records anew\n",
		resp.GetFromKeyId(), resp.GetToKeyId(), resp.GetAccountsResealed(), resp.GetRecordsRetagged())
	if n := resp.GetRecordsTampered(); n > 0 {
		fmt.Fprintf(stdout, "%d records failed their integrity check under both keys and were left as they were (they are not used; see the audit trail)\n", n)
	}
	fmt.Fprintln(stdout, "restart the replicas without the previous master key now")
	return nil
}
