//! A `protoc` stand-in for build scripts we do not control (etcd-client's), so the build
//! needs no system `protoc`. It accepts the subset of protoc's command line that prost-build
//! uses: `--include_imports`, `--include_source_info`, `-o FILE`, `-I DIR`, and proto files.
use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let mut includes: Vec<PathBuf> = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut output: Option<PathBuf> = None;
    let (mut imports, mut source_info) = (false, false);
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        match text.as_str() {
            "--include_imports" => imports = true,
            "--include_source_info" => source_info = true,
            "--version" => {
                println!("libprotoc 3.21.0 (protox)");
                return ExitCode::SUCCESS;
            }
            "-o" => output = args.next().map(PathBuf::from),
            "-I" => includes.extend(args.next().map(PathBuf::from)),
            _ if text.starts_with("--descriptor_set_out=") => {
                output = Some(PathBuf::from(&text["--descriptor_set_out=".len()..]))
            }
            _ if text.starts_with("-o") => output = Some(PathBuf::from(&text[2..])),
            _ if text.starts_with("--proto_path=") => {
                includes.push(PathBuf::from(&text["--proto_path=".len()..]))
            }
            _ if text.starts_with("-I") => includes.push(PathBuf::from(&text[2..])),
            _ if text.starts_with("--experimental_allow_proto3_optional") => {}
            _ if text.starts_with('-') => {
                eprintln!("protoc-protox: unsupported option {text}");
                return ExitCode::FAILURE;
            }
            _ => files.push(PathBuf::from(arg)),
        }
    }
    let Some(output) = output else {
        eprintln!("protoc-protox: missing -o OUTPUT");
        return ExitCode::FAILURE;
    };
    if includes.is_empty() {
        includes.push(PathBuf::from("."));
    }
    let result = protox::Compiler::new(includes).and_then(|mut compiler| {
        compiler.include_imports(imports);
        compiler.include_source_info(source_info);
        for file in &files {
            compiler.open_file(file)?;
        }
        Ok(compiler.encode_file_descriptor_set())
    });
    match result {
        Ok(bytes) => match std::fs::write(&output, bytes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("protoc-protox: cannot write {}: {error}", output.display());
                ExitCode::FAILURE
            }
        },
        Err(error) => {
            eprintln!("protoc-protox: {error:?}");
            ExitCode::FAILURE
        }
    }
}
