package api

import (
	"encoding/base64"
)

const maxPageSize = 1000

// pageSize reads a page_size: 0 means def, values above maxPageSize mean maxPageSize.
func pageSize(size int32, def int) (int, error) {
	switch {
	case size < 0:
		return 0, invalidArgument("page_size", "must not be negative")
	case size == 0:
		return def, nil
	}
	return min(int(size), maxPageSize), nil
}

// idPage reads the page of a list ordered by resource id (accounts, caller
// keys): its size and the id it continues after.
func idPage(req interface {
	GetPageSize() int32
	GetPageToken() string
}) (int, string, error) {
	size, err := pageSize(req.GetPageSize(), 50)
	if err != nil || req.GetPageToken() == "" {
		return size, "", err
	}
	raw, err := base64.RawURLEncoding.DecodeString(req.GetPageToken())
	if err != nil || !validAccountID(string(raw)) {
		return 0, "", invalidArgument("page_token", "is not a token this server issued")
	}
	return size, string(raw), nil
}

// idPageToken continues a list after the given id.
func idPageToken(lastID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(lastID))
}
