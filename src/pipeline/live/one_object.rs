//! The object commands of a stream that runs one object (the device-resident path): what each
//! command changes, decided before anything changes, with the host path's ids and errors. Kept apart
//! from the device session so that its rules are tested on every machine.

use crate::error::{Error, Result};
use crate::pipeline::commands::{split_prompts, Command, ObjectId};

/// What a command does to the stream's one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Track `prompt` as object `id` (a new object, or a new prompt for the existing one).
    Set {
        /// The object's id.
        id: ObjectId,
        /// Its prompt.
        prompt: String,
        /// The id an `add` without one gets afterwards.
        next_auto: ObjectId,
    },
    /// Drop the object.
    Clear,
    /// Not an object command.
    Nothing,
}

/// The one object's id, and the id an `add` without one gets.
#[derive(Debug, Default, Clone)]
pub(crate) struct OneObject {
    id: Option<ObjectId>,
    /// One past the highest id given out (as on the host path, a removed object's id is not the
    /// next one given out).
    next_auto: ObjectId,
}

fn refused(what: &str) -> Error {
    Error::Config(format!(
        "{what}: the device-resident path runs one object per stream; run with --host-path for several"
    ))
}

/// The one prompt of `prompt` (`;` separates several).
fn single(prompt: &str, what: &str) -> Result<String> {
    let ps: Vec<&str> = split_prompts(prompt).collect();
    match ps.as_slice() {
        [] => Err(Error::Text("prompt is empty".into())),
        [p] => Ok(p.to_string()),
        _ => Err(refused(&format!("{what} holds {} prompts", ps.len()))),
    }
}

impl OneObject {
    /// The object's id, if there is one.
    pub(crate) fn id(&self) -> Option<ObjectId> {
        self.id
    }

    fn unknown(&self, id: ObjectId) -> Error {
        let ids = self.id.map(|i| i.to_string()).unwrap_or_default();
        Error::Config(format!("no object {id} (objects: [{ids}])"))
    }

    /// What `command` would change, and the ids it adds; an error changes nothing.
    pub(crate) fn plan(&self, command: &Command) -> Result<(Change, Vec<ObjectId>)> {
        Ok(match command {
            Command::Prompt { prompt } => {
                // As on the host path, a prompt restarts the ids: 0, and 1 for the next `add`.
                let prompt = single(prompt, "the prompt")?;
                let next_auto = 1;
                (
                    Change::Set {
                        id: 0,
                        prompt,
                        next_auto,
                    },
                    vec![0],
                )
            }
            Command::Clear => (Change::Clear, Vec::new()),
            Command::Add { prompt, object } => {
                let prompt = single(prompt, "add")?;
                if let Some(have) = self.id {
                    return Err(refused(&format!("object {have} exists")));
                }
                let id = object.unwrap_or(self.next_auto);
                let next_auto = self.next_auto.max(id.saturating_add(1));
                (
                    Change::Set {
                        id,
                        prompt,
                        next_auto,
                    },
                    vec![id],
                )
            }
            Command::Remove { object } => {
                if self.id != Some(*object) {
                    return Err(self.unknown(*object));
                }
                (Change::Clear, Vec::new())
            }
            Command::Replace { object, prompt } => {
                let prompt = single(prompt, "replace")?;
                if self.id != Some(*object) {
                    return Err(self.unknown(*object));
                }
                let (id, next_auto) = (*object, self.next_auto);
                (
                    Change::Set {
                        id,
                        prompt,
                        next_auto,
                    },
                    Vec::new(),
                )
            }
            _ => (Change::Nothing, Vec::new()),
        })
    }

    /// Records a change the session has taken.
    pub(crate) fn commit(&mut self, change: &Change) {
        match change {
            Change::Set { id, next_auto, .. } => {
                self.id = Some(*id);
                self.next_auto = *next_auto;
            }
            Change::Clear => self.id = None,
            Change::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(o: &mut OneObject, c: Command) -> Result<Vec<ObjectId>> {
        let (change, added) = o.plan(&c)?;
        o.commit(&change);
        Ok(added)
    }

    fn add(prompt: &str, object: Option<ObjectId>) -> Command {
        Command::Add {
            prompt: prompt.into(),
            object,
        }
    }

    #[test]
    fn one_object_with_the_host_paths_ids_and_errors() {
        let mut o = OneObject::default();
        let p = |s: &str| Command::Prompt { prompt: s.into() };
        assert_eq!(apply(&mut o, p("the red cup")).unwrap(), [0]);
        assert_eq!(o.id(), Some(0));
        // Several objects are refused, naming the way to get them; nothing changes.
        let e = apply(&mut o, p("the red cup; the person")).unwrap_err();
        assert!(e.to_string().contains("--host-path"), "{e}");
        let e = apply(&mut o, add("the person", None)).unwrap_err();
        assert!(e.to_string().contains("object 0 exists"), "{e}");
        assert_eq!(o.id(), Some(0));
        // Empty prompts, unknown ids.
        let e = apply(&mut o, p(" ; ")).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = apply(
            &mut o,
            Command::Replace {
                object: 3,
                prompt: "x".into(),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("no object 3 (objects: [0])"), "{e}");
        let (change, added) = o
            .plan(&Command::Replace {
                object: 0,
                prompt: "the blue cup".into(),
            })
            .unwrap();
        assert_eq!(
            change,
            Change::Set {
                id: 0,
                prompt: "the blue cup".into(),
                next_auto: 1
            }
        );
        assert!(added.is_empty());
        // Remove, then add: the next id, not the removed one (as on the host path).
        assert!(apply(&mut o, Command::Remove { object: 0 })
            .unwrap()
            .is_empty());
        assert_eq!(o.id(), None);
        let e = apply(&mut o, Command::Remove { object: 0 }).unwrap_err();
        assert!(e.to_string().contains("no object 0 (objects: [])"), "{e}");
        assert_eq!(apply(&mut o, add("the person", None)).unwrap(), [1]);
        assert_eq!(
            apply(&mut o, Command::Clear).unwrap(),
            Vec::<ObjectId>::new()
        );
        assert_eq!(apply(&mut o, add("the dog", Some(7))).unwrap(), [7]);
        assert_eq!(o.id(), Some(7));
        apply(&mut o, Command::Clear).unwrap();
        assert_eq!(apply(&mut o, add("the cat", None)).unwrap(), [8]);
        // A prompt restarts the ids at 0, then 1.
        assert_eq!(apply(&mut o, p("the cup")).unwrap(), [0]);
        apply(&mut o, Command::Clear).unwrap();
        assert_eq!(apply(&mut o, add("the cup", None)).unwrap(), [1]);
        // Other commands are not object commands.
        assert_eq!(o.plan(&Command::Pause).unwrap().0, Change::Nothing);
    }
}
