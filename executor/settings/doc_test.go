package settings

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReferenceCoversEveryKey keeps docs/configuration.md true to the code.
func TestReferenceCoversEveryKey(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "configuration.md"))
	require.NoError(t, err)
	var missing []string
	for _, key := range tomlKeys(reflect.TypeOf(Settings{}), "") {
		last := key[strings.LastIndex(key, ".")+1:]
		if !strings.Contains(string(doc), "| `"+last+"` |") {
			missing = append(missing, key)
		}
	}
	assert.Empty(t, missing, "keys missing from docs/configuration.md")
}

// TestExampleIsValid checks that the shipped example passes `berth check`.
func TestExampleIsValid(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "berth.toml")
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	s := Defaults()
	require.NoError(t, Decode(path, data, &s))
}

func tomlKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("toml")
		if tag == "" {
			continue
		}
		// tables are headings in the doc; their keys are rows
		switch ft := f.Type; {
		case ft.Kind() == reflect.Struct:
			keys = append(keys, tomlKeys(ft, prefix+tag+".")...)
		case (ft.Kind() == reflect.Map || ft.Kind() == reflect.Slice) && ft.Elem().Kind() == reflect.Struct:
			keys = append(keys, tomlKeys(ft.Elem(), prefix+tag+".*.")...)
		default:
			keys = append(keys, prefix+tag)
		}
	}
	return keys
}
