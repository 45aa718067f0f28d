package settings

import (
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// overlay copies onto dst (the defaults) what the file defined in src,
// key by key: a table the file names keeps the defaults of the keys it
// leaves out ([environments.prod] with only a namespace stays manual and
// protected); an array of tables the file gives ([[flows]]) replaces the
// defaults' whole, never merged by position; a map of plain values
// ([stages], [build.args]) gains the file's keys.
func overlay(dst, src reflect.Value, md toml.MetaData, path []string) {
	t := src.Type()
	for i := 0; i < t.NumField(); i++ {
		key, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if key == "" || key == "-" {
			continue
		}
		p := append(append([]string(nil), path...), key)
		if !md.IsDefined(p...) {
			continue
		}
		d, s := dst.Field(i), src.Field(i)
		switch {
		case s.Kind() == reflect.Struct:
			overlay(d, s, md, p)
		case s.Kind() == reflect.Map && s.Type().Elem().Kind() == reflect.Struct:
			merged := reflect.MakeMap(s.Type())
			for _, k := range d.MapKeys() {
				merged.SetMapIndex(k, d.MapIndex(k))
			}
			for _, k := range s.MapKeys() {
				base := reflect.New(s.Type().Elem()).Elem()
				if v := d.MapIndex(k); v.IsValid() {
					base.Set(v)
				}
				overlay(base, s.MapIndex(k), md, append(append([]string(nil), p...), k.String()))
				merged.SetMapIndex(k, base)
			}
			d.Set(merged)
		case s.Kind() == reflect.Map:
			merged := reflect.MakeMap(s.Type())
			for _, k := range d.MapKeys() {
				merged.SetMapIndex(k, d.MapIndex(k))
			}
			for _, k := range s.MapKeys() {
				merged.SetMapIndex(k, s.MapIndex(k))
			}
			d.Set(merged)
		default: // plain values and arrays, arrays of tables included: the file's, whole
			d.Set(s)
		}
	}
}
