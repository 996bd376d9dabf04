//! The `loraweld` command behind `main`: its arguments (`args`), what each subcommand does
//! (here), and how reports and errors are printed (`print`).

pub mod args;
pub mod print;
pub mod progress;

use args::{Cli, Command, InspectArgs, PushArgs, SaveArgs, VerifyArgs};
use loraweld::{Error, HubConfig};
use print::{print_json, print_notes, print_push, print_save, print_verify};

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Save(args) => save(&args),
        Command::Push(args) => push(&args),
        Command::Verify(args) => verify(&args),
        Command::Inspect(args) => inspect(&args),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "loraweld", &mut std::io::stdout());
            Ok(())
        }
    }
}

fn save(args: &SaveArgs) -> Result<(), Error> {
    let opts = args.options()?;
    let report = loraweld::save(&opts)?;
    print_notes(&report);
    if args.json {
        print_json(&report)
    } else {
        print_save(&report);
        Ok(())
    }
}

fn push(args: &PushArgs) -> Result<(), Error> {
    let mut hub = HubConfig::from_env(args.hub.token.as_deref());
    hub.progress = args::bars(args.json);
    let opts = args.hub.push_options(&args.repo);
    let report = loraweld::push(&args.dir, &opts, &hub, args.temporary_location.as_deref())?;
    if args.json {
        return print_json(&report);
    }
    print_push(&args.dir, &report);
    Ok(())
}

fn verify(args: &VerifyArgs) -> Result<(), Error> {
    let r = loraweld::verify(&args.dir)?;
    if args.json {
        print_json(&r)?;
    } else {
        print_verify(&r);
    }
    if r.ok() {
        Ok(())
    } else {
        Err(Error::VerifyFailed {
            dir: args.dir.clone(),
            problems: r.problems.len(),
        })
    }
}

fn inspect(args: &InspectArgs) -> Result<(), Error> {
    let r = loraweld::inspect(&args.path, args.base.as_deref())?;
    if args.json {
        return print_json(&r);
    }
    print!("{}", loraweld::inspect::render(&r));
    Ok(())
}
