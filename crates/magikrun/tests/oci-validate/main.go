// oci-validate: runtime-tools' bundle validation and the runtime-spec JSON schemas, offline.
//
//	oci-validate config <bundle-dir> <schema-dir>   config.json: schema + runtime-tools checks
//	oci-validate state  <state.json> <schema-dir>   a `state` answer: state-schema.json
//
// Built against Debian's golang-github-opencontainers-runtime-tools-dev (GOPATH mode). The
// schema check of runtime-tools' CheckAll fetches the schema from the network, so it is replaced
// by the same gojsonschema validation against the schema files on disk.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	multierror "github.com/hashicorp/go-multierror"
	"github.com/opencontainers/runtime-tools/validate"
	"github.com/xeipuuv/gojsonschema"
)

func schemaCheck(schemaFile, docFile string) []string {
	abs, err := filepath.Abs(schemaFile)
	if err != nil {
		return []string{err.Error()}
	}
	docAbs, err := filepath.Abs(docFile)
	if err != nil {
		return []string{err.Error()}
	}
	res, err := gojsonschema.Validate(
		gojsonschema.NewReferenceLoader("file://"+abs),
		gojsonschema.NewReferenceLoader("file://"+docAbs),
	)
	if err != nil {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range res.Errors() {
		out = append(out, "schema: "+e.String())
	}
	return out
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: oci-validate config|state <path> <schema-dir>")
		os.Exit(2)
	}
	mode, path, schemas := os.Args[1], os.Args[2], os.Args[3]
	var problems []string
	switch mode {
	case "config":
		problems = schemaCheck(filepath.Join(schemas, "config-schema.json"), filepath.Join(path, "config.json"))
		v, err := validate.NewValidatorFromPath(path, true, "linux")
		if err != nil {
			fmt.Println("load:", err)
			os.Exit(1)
		}
		// CheckSemVer is left out: this runtime-tools (Debian, 2022) accepts only configs
		// that target runtime-spec 1.0.2-dev; the schema check above covers the field.
		for _, check := range []func() error{
			v.CheckPlatform, v.CheckRoot, v.CheckMandatoryFields,
			v.CheckMounts, v.CheckProcess, v.CheckLinux, v.CheckAnnotations, v.CheckHooks,
		} {
			err := check()
			if me, ok := err.(*multierror.Error); ok {
				if me == nil || len(me.Errors) == 0 {
					continue
				}
				for _, e := range me.Errors {
					problems = append(problems, e.Error())
				}
				continue
			}
			if err != nil {
				problems = append(problems, err.Error())
			}
		}
	case "state":
		problems = schemaCheck(filepath.Join(schemas, "state-schema.json"), path)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", mode)
		os.Exit(2)
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Println(p)
		}
		os.Exit(1)
	}
	fmt.Println("valid")
}
