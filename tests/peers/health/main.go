// vc-health: what kstatus, Argo CD and Flux say about one Kubernetes object.
//
//	vc-health --argocd-lua docs/health/argocd.lua --flux-exprs docs/health/flux-health-checks.yaml <obj.json
//
// prints one JSON line: {"kstatus":…,"kstatusMessage":…,"argocd":…,"argocdMessage":…,
// "flux":…,"fluxMessage":…}. kstatus is the real library; Argo CD and Flux are not linked
// (their modules are too large, or not served), so their evaluation is redone here with the
// libraries they use (gopher-lua, cel-go) and the same steps; each step below names the
// upstream code it follows. Exit 1 when the inputs cannot be used at all (unreadable files, a
// Lua script that does not parse, no Flux entry for the object's kind): a verdict must never
// stand in for a broken harness.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type verdicts struct {
	Kstatus        string `json:"kstatus"`
	KstatusMessage string `json:"kstatusMessage"`
	Argocd         string `json:"argocd"`
	ArgocdMessage  string `json:"argocdMessage"`
	Flux           string `json:"flux"`
	FluxMessage    string `json:"fluxMessage"`
}

func main() {
	luaPath := flag.String("argocd-lua", "", "Argo CD health script (Lua)")
	exprsPath := flag.String("flux-exprs", "", "Flux healthCheckExprs: a YAML list, or a Kustomization holding spec.healthCheckExprs")
	flag.Parse()
	if *luaPath == "" || *exprsPath == "" || flag.NArg() != 0 {
		fail(errors.New("usage: vc-health --argocd-lua FILE --flux-exprs FILE <object.json"))
	}
	if err := run(*luaPath, *exprsPath, os.Stdin, os.Stdout); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "vc-health:", err)
	os.Exit(1)
}

func run(luaPath, exprsPath string, in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("read stdin: %w", err)
	}
	// The JSON decoding of client-go's caches, which both Argo CD and Flux read from:
	// integers become int64, as the Lua conversion and NestedInt64 expect.
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("stdin is not a Kubernetes object: %w", err)
	}
	script, err := os.ReadFile(luaPath)
	if err != nil {
		return err
	}
	exprs, err := fluxEvaluator(exprsPath, u)
	if err != nil {
		return err
	}

	var v verdicts
	res, err := status.Compute(u)
	if err != nil {
		return fmt.Errorf("kstatus: %w", err)
	}
	v.Kstatus, v.KstatusMessage = string(res.Status), res.Message
	if v.Argocd, v.ArgocdMessage, err = argocdHealth(u, string(script)); err != nil {
		return err
	}
	v.Flux, v.FluxMessage = exprs.evaluate(u)
	enc := json.NewEncoder(out)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// --- Argo CD ------------------------------------------------------------------------------
// As gitops-engine's health.GetResourceHealth and Argo CD's util/lua VM.ExecuteHealthLua do
// for a script from argocd-cm (resource.customizations.health.<group>_<kind>, useOpenLibs
// unset).

var validArgoHealth = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

func argocdHealth(u *unstructured.Unstructured, script string) (string, string, error) {
	// Objects being deleted never reach the script.
	if u.GetDeletionTimestamp() != nil {
		return "Progressing", "Pending deletion", nil
	}
	// A script that does not parse is a broken deliverable, not a verdict.
	if _, err := parse.Parse(strings.NewReader(script), "<health.lua>"); err != nil {
		return "", "", fmt.Errorf("argocd health script: %w", err)
	}
	status, message, err := runHealthLua(u, script)
	if err != nil {
		// Argo CD shows a failing script as Unknown with the error as message.
		return "Unknown", err.Error(), nil
	}
	return status, message, nil
}

func runHealthLua(u *unstructured.Unstructured, script string) (string, string, error) {
	// Custom scripts run without the standard libraries (no string, math, io, ...); only
	// package, base, table and an os with time/date are opened.
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, lua.OpenOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return "", "", fmt.Errorf("open %s: %w", lib.name, err)
		}
	}
	safeOs := restrictOs(l)
	l.PreloadModule(lua.OsLibName, func(l *lua.LState) int { l.Push(safeOs); return 1 })

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, u.Object))
	if err := l.DoString(script); err != nil {
		return "", "", err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	// Argo CD encodes the table as JSON into {status, message}: strings or absent.
	field := func(name string) (string, error) {
		switch v := ret.RawGetString(name).(type) {
		case lua.LString:
			return string(v), nil
		case *lua.LNilType:
			return "", nil
		default:
			return "", fmt.Errorf("health %s is a %s, not a string", name, v.Type())
		}
	}
	status, err := field("status")
	if err != nil {
		return "", "", err
	}
	message, err := field("message")
	if err != nil {
		return "", "", err
	}
	if !validArgoHealth[status] {
		return "Unknown", "Lua returned an invalid health status", nil
	}
	return status, message, nil
}

// restrictOs leaves only os.time and os.date, Argo CD's "safe" os library.
func restrictOs(l *lua.LState) *lua.LTable {
	full, _ := l.GetGlobal(lua.OsLibName).(*lua.LTable)
	safe := l.NewTable()
	if full != nil {
		for _, name := range []string{"time", "date"} {
			safe.RawSetString(name, full.RawGetString(name))
		}
	}
	l.SetGlobal(lua.OsLibName, safe)
	return safe
}

// toLua converts like Argo CD's decodeValue: maps to hash tables, slices to arrays, JSON
// numbers to Lua numbers, null to nil.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(toLua(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), toLua(l, item))
		}
		return tbl
	}
	return lua.LNil
}

// --- Flux ---------------------------------------------------------------------------------
// As fluxcd/pkg runtime/cel: NewStatusReader picks the entry by GroupKind, NewExpression
// parses (never compiles: the variables are the object's top-level fields, undeclared), and
// StatusEvaluator.Evaluate checks observedGeneration, then inProgress, failed, current; an
// error becomes Unknown through kstatus' generic status reader.

type healthCheck struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Current    string `json:"current"`
	InProgress string `json:"inProgress"`
	Failed     string `json:"failed"`
}

type evaluator struct {
	inProgress, failed, current expression
}

type expression struct {
	text string
	prog cel.Program
}

func fluxEvaluator(path string, u *unstructured.Unstructured) (*evaluator, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	checks, err := readHealthChecks(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	want := u.GroupVersionKind().GroupKind()
	var found *healthCheck
	for i := range checks {
		gk := schema.FromAPIVersionAndKind(checks[i].APIVersion, checks[i].Kind).GroupKind()
		if gk != want {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("%s: duplicate custom health check for GroupKind %s", path, gk)
		}
		found = &checks[i]
	}
	if found == nil {
		return nil, fmt.Errorf("%s: no healthCheckExprs entry for %s (Flux would fall back to kstatus)", path, want)
	}
	if found.Current == "" {
		return nil, fmt.Errorf("%s: %s: expression current not specified", path, want)
	}
	e := &evaluator{}
	for _, p := range []struct {
		name string
		expr string
		into *expression
	}{
		{"current", found.Current, &e.current},
		{"failed", found.Failed, &e.failed},
		{"inProgress", found.InProgress, &e.inProgress},
	} {
		if p.expr == "" {
			continue
		}
		p.into.text = p.expr
		if p.into.prog, err = celProgram(p.expr); err != nil {
			return nil, fmt.Errorf("%s: %s: %s: %w", path, want, p.name, err)
		}
	}
	return e, nil
}

// readHealthChecks takes the list itself or a Kustomization that holds it.
func readHealthChecks(raw []byte) ([]healthCheck, error) {
	var list []healthCheck
	if err := yaml.UnmarshalStrict(raw, &list); err == nil {
		return list, nil
	}
	var ks struct {
		Spec struct {
			HealthCheckExprs []healthCheck `json:"healthCheckExprs"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &ks); err != nil {
		return nil, err
	}
	if len(ks.Spec.HealthCheckExprs) == 0 {
		return nil, errors.New("neither a list of health checks nor a Kustomization with spec.healthCheckExprs")
	}
	return ks.Spec.HealthCheckExprs, nil
}

func celProgram(expr string) (cel.Program, error) {
	env, err := cel.NewEnv(
		cel.HomogeneousAggregateLiterals(),
		cel.EagerlyValidateDeclarations(true),
		cel.DefaultUTCTimeZone(true),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Encoders(),
	)
	if err != nil {
		return nil, err
	}
	ast, issues := env.Parse(expr)
	if issues != nil && issues.Err() != nil {
		return nil, fmt.Errorf("failed to parse the CEL expression '%s': %s", expr, issues.String())
	}
	return env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(100))
}

func (e *evaluator) evaluate(u *unstructured.Unstructured) (string, string) {
	obj := u.UnstructuredContent()
	observed, ok, err := unstructured.NestedInt64(obj, "status", "observedGeneration")
	if err != nil {
		return string(status.UnknownStatus), err.Error()
	}
	if ok {
		generation, ok, err := unstructured.NestedInt64(obj, "metadata", "generation")
		if err != nil {
			return string(status.UnknownStatus), err.Error()
		}
		if ok && observed != generation {
			return string(status.InProgressStatus), ""
		}
	}
	for _, step := range []struct {
		expr   expression
		status status.Status
	}{
		{e.inProgress, status.InProgressStatus},
		{e.failed, status.FailedStatus},
		{e.current, status.CurrentStatus},
	} {
		if step.expr.prog == nil {
			continue
		}
		val, _, err := step.expr.prog.ContextEval(context.Background(), obj)
		if err != nil {
			return string(status.UnknownStatus), fmt.Sprintf("failed to evaluate the CEL expression '%s': %v", step.expr.text, err)
		}
		b, ok := val.(types.Bool)
		if !ok {
			return string(status.UnknownStatus), fmt.Sprintf("failed to evaluate CEL expression as boolean: '%s'", step.expr.text)
		}
		if b {
			return string(step.status), ""
		}
	}
	return string(status.InProgressStatus), ""
}
