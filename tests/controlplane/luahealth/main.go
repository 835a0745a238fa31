// Command luahealth runs an Argo CD resource health script the way Argo CD does, in gopher-lua
// (the interpreter Argo CD embeds): the object is the global `obj`, the script returns a table
// with `status` and `message`. It reads a JSON array of objects on stdin and prints a JSON array
// of {"status", "message"} on stdout, one per object.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
)

func toLua(L *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []any:
		t := L.NewTable()
		for _, e := range x {
			t.Append(toLua(L, e))
		}
		return t
	case map[string]any:
		t := L.NewTable()
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	}
	panic(fmt.Sprintf("unsupported JSON value %T", v))
}

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: luahealth SCRIPT.lua < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var objects []any
	if err := json.NewDecoder(os.Stdin).Decode(&objects); err != nil {
		fmt.Fprintln(os.Stderr, "objects:", err)
		os.Exit(1)
	}
	out := []result{}
	for i, obj := range objects {
		L := lua.NewState(lua.Options{SkipOpenLibs: false})
		L.SetGlobal("obj", toLua(L, obj))
		if err := L.DoString(string(script)); err != nil {
			fmt.Fprintf(os.Stderr, "object %d: %v\n", i, err)
			os.Exit(1)
		}
		t, ok := L.Get(-1).(*lua.LTable)
		if !ok {
			fmt.Fprintf(os.Stderr, "object %d: the script returned %s, not a table\n", i, L.Get(-1).Type())
			os.Exit(1)
		}
		out = append(out, result{Status: t.RawGetString("status").String(), Message: t.RawGetString("message").String()})
		L.Close()
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
