package store

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// Records are written by encoding/json and read by json v2 (decode): every
// field of every record type, set to something other than its zero
// value, reads back as written.
func TestDecodeReadsWhatEncodingJSONWrote(t *testing.T) {
	for _, rec := range []versioned{&Account{}, &TokenState{}, &CallerKey{}, &AdminPrincipal{}, &AuditEvent{}, &HubSession{}, &ConnectSession{}, &Authorization{}} {
		v := reflect.ValueOf(rec).Elem()
		set := fill(v)
		v.FieldByName("Version").SetInt(recordVersion)
		if set < 3 {
			t.Fatalf("%T: only %d fields set", rec, set)
		}
		data, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		got := reflect.New(v.Type())
		if err := decode(data, got.Interface()); err != nil {
			t.Fatalf("%T: %v\n%s", rec, err, data)
		}
		if !reflect.DeepEqual(got.Elem().Interface(), v.Interface()) {
			t.Errorf("%T read back differs:\n got %+v\nwant %+v\nfrom %s", rec, got.Elem().Interface(), v.Interface(), data)
		}
	}
}

// fill sets every stored field of v, recursively, to a value other than
// its zero value, and returns how many it set.
func fill(v reflect.Value) int {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2026, 12, 2, 10, 11, 12, 13, time.UTC)))
			return 1
		}
		n := 0
		for i := range v.NumField() {
			if f := v.Type().Field(i); f.IsExported() && f.Tag.Get("json") != "-" {
				n += fill(v.Field(i))
			}
		}
		return n
	case reflect.String:
		v.SetString("s-" + v.Type().String())
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(7_000_000_007) // a time.Duration of 7 s
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(7)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		fill(v.Index(0))
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k)
		fill(e)
		v.SetMapIndex(k, e)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem())
	default:
		panic("fill: no value for " + v.Type().String())
	}
	return 1
}

// A map with keys that were invalid UTF-8 is written by encoding/json with
// each invalid byte as U+FFFD, so two keys can be written as one name
// twice: read back as encoding/json reads it (the last value), not refused.
func TestDecodeReadsKeysEncodingJSONMerged(t *testing.T) {
	a := Account{Version: recordVersion, ID: "acme", EndpointParams: map[string]string{"a\xff": "1", "a\xfe": "2"}, AuthParams: map[string]string{"b\xff": "3"}}
	data, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	var want, got Account
	if err := json.Unmarshal(data, &want); err != nil {
		t.Fatal(err)
	}
	if len(want.EndpointParams) != 1 {
		t.Fatalf("encoding/json read %q from %s; this test expects one key", want.EndpointParams, data)
	}
	if err := decode(data, &got); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("decode(%s) = %+v, %v; want %+v", data, got, err, want)
	}
}
