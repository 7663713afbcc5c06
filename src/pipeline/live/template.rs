//! What a stream that joins the run late starts with ([`JoinTemplate`]): the configuration's objects
//! and selection, changed by every command sent to all streams (`"stream": "all"`, the ROS 2 node's
//! node-wide prompt and service) since. A camera unplugged at start-up therefore joins with the
//! objects, ids, selection mode and pause state the open cameras got from those commands, and a
//! later `add` to all gives it the same new id as the others.

use crate::error::{Error, Result};
use crate::pipeline::commands::{Command, ObjectId, ObjectInfo, SelectMode, Settings};
use crate::pipeline::objects::{apply_command_with_ids, IdSpace, Keyed, ObjectSet, ObjectTable};

/// One object of the template: its id and prompt (the text is encoded by each stream that adopts it).
#[derive(Debug, Clone)]
struct Entry {
    id: ObjectId,
    prompt: String,
}

impl Keyed for Entry {
    fn id(&self) -> ObjectId {
        self.id
    }
}

/// The template's objects under the streams' id and limit rules ([`ObjectTable`]); prompts are
/// not encoded here (every open stream has already accepted the command, or none is open to judge).
#[derive(Debug, Clone)]
struct Prompts(ObjectTable<Entry>);

impl ObjectSet for Prompts {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn max_objects(&self) -> usize {
        self.0.max()
    }
    fn ids(&self) -> Vec<ObjectId> {
        self.0.iter().map(|o| o.id).collect()
    }
    fn id_space(&self) -> &IdSpace {
        self.0.id_space()
    }
    fn check_prompt(&mut self, _prompt: &str) -> Result<()> {
        Ok(())
    }
    fn set_prompts(&mut self, prompts: &[&str]) -> Result<()> {
        self.0
            .replace_all(prompts.iter().enumerate().map(|(i, p)| Entry {
                id: i as ObjectId,
                prompt: p.to_string(),
            }))
    }
    fn clear(&mut self) -> Result<()> {
        self.0.clear();
        Ok(())
    }
    fn add(&mut self, id: Option<ObjectId>, prompt: &str) -> Result<ObjectId> {
        let id = self.0.claim(id)?;
        self.0.insert(Entry {
            id,
            prompt: prompt.to_string(),
        });
        Ok(id)
    }
    fn remove(&mut self, id: ObjectId) -> Result<()> {
        self.0.remove(id).map(|_| ())
    }
    fn replace(&mut self, id: ObjectId, prompt: &str) -> Result<()> {
        self.0.get_mut(id)?.prompt = prompt.to_string();
        Ok(())
    }
    fn resume_ids(&mut self, from: &IdSpace) {
        self.0.resume_ids(from);
    }
}

/// The objects and selection a stream joining later starts with.
#[derive(Debug, Clone)]
pub struct JoinTemplate {
    objects: Prompts,
    mode: SelectMode,
    threshold: f32,
    paused: bool,
}

impl JoinTemplate {
    /// The configuration's start: one object per `;`-separated part of `prompt` (ids 0, 1, …), at
    /// most `max_objects`; multi mode with threshold `multi` when given.
    pub fn new(prompt: Option<&str>, max_objects: usize, multi: Option<f32>) -> Result<Self> {
        let defaults = Settings::default();
        let mut t = JoinTemplate {
            objects: Prompts(ObjectTable::new(max_objects)?),
            mode: multi.map_or(defaults.mode, |_| SelectMode::Multi),
            threshold: multi.unwrap_or(defaults.threshold),
            paused: false,
        };
        t.set_prompt(prompt)?;
        Ok(t)
    }

    /// Replaces the objects by `prompt`'s (none for `None`), as a `prompt` (or `clear`) command would.
    pub fn set_prompt(&mut self, prompt: Option<&str>) -> Result<()> {
        let command = match prompt {
            Some(p) => Command::Prompt {
                prompt: p.to_string(),
            },
            None => Command::Clear,
        };
        self.apply(&command).map(|_| ())
    }

    /// Applies a command every open stream accepted (or one sent to all while none is open): object
    /// commands, `mode`, `pause`, `resume`; others change nothing. Returns the ids it added; a
    /// refused command (unknown or taken id, over the limit, an empty prompt) changes nothing. A
    /// threshold is taken as it is (the command parser checks its range, as for the streams).
    pub fn apply(&mut self, command: &Command) -> Result<Vec<ObjectId>> {
        self.apply_with_ids(command, None)
    }

    /// [`JoinTemplate::apply`], where an `add` gives its objects `ids` (one per prompt): the ids
    /// the open streams gave them ([`crate::pipeline::objects::common_ids`]).
    pub fn apply_with_ids(
        &mut self,
        command: &Command,
        ids: Option<&[ObjectId]>,
    ) -> Result<Vec<ObjectId>> {
        let added = apply_command_with_ids(&mut self.objects, command, ids)?;
        match command {
            Command::Mode { mode, threshold } => {
                self.mode = *mode;
                if let Some(t) = threshold {
                    self.threshold = *t;
                }
            }
            Command::Pause => self.paused = true,
            Command::Resume => self.paused = false,
            _ => {}
        }
        Ok(added)
    }

    /// The objects, ascending id: id and prompt.
    pub fn objects(&self) -> impl Iterator<Item = (ObjectId, &str)> {
        self.objects.0.iter().map(|o| (o.id, o.prompt.as_str()))
    }

    /// Where the next assigned id search starts ([`ObjectTable::next_id`]).
    pub fn next_id(&self) -> ObjectId {
        self.objects.0.next_id()
    }

    /// The ids given out and where the automatic search starts ([`ObjectTable::id_space`]).
    pub fn id_space(&self) -> &IdSpace {
        self.objects.0.id_space()
    }

    /// The ids of the objects, ascending.
    pub fn ids(&self) -> Vec<ObjectId> {
        self.objects.ids()
    }

    /// The settings a stream adopting the template reports (`prompt_version` 1 with objects).
    pub fn settings(&self) -> Settings {
        let objects: Vec<ObjectInfo> = self
            .objects()
            .map(|(id, p)| ObjectInfo {
                id,
                prompt: p.to_string(),
            })
            .collect();
        let prompts: Vec<&str> = objects.iter().map(|o| o.prompt.as_str()).collect();
        Settings {
            prompt: (!prompts.is_empty()).then(|| prompts.join("; ")),
            prompt_version: u64::from(!objects.is_empty()),
            objects,
            mode: self.mode,
            threshold: self.threshold,
            paused: self.paused,
        }
    }

    /// Gives `set` the template's objects with their ids, and its ids given out and next assigned
    /// id. An object the
    /// set refuses (a prompt its text encoder rejects) is left out; each comes back with the reason,
    /// so the stream still joins with the rest.
    pub fn restore<S: ObjectSet + ?Sized>(&self, set: &mut S) -> Vec<(ObjectId, Error)> {
        let mut refused = Vec::new();
        let _ = set.clear();
        for (id, prompt) in self.objects() {
            if let Err(e) = set.add(Some(id), prompt) {
                refused.push((id, e));
            }
        }
        set.resume_ids(self.id_space());
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::objects::apply_command;

    fn add(prompt: &str, object: Option<ObjectId>) -> Command {
        Command::Add {
            prompt: prompt.into(),
            object,
        }
    }

    #[test]
    fn starts_from_the_configuration() {
        let t = JoinTemplate::new(Some("a cat; a dog"), 4, Some(0.4)).unwrap();
        let s = t.settings();
        assert_eq!(s.prompt.as_deref(), Some("a cat; a dog"));
        assert_eq!(
            t.objects().collect::<Vec<_>>(),
            [(0, "a cat"), (1, "a dog")]
        );
        assert_eq!(
            (s.mode, s.threshold, s.paused),
            (SelectMode::Multi, 0.4, false)
        );
        assert_eq!((t.next_id(), s.prompt_version), (2, 1));
        let t = JoinTemplate::new(None, 4, None).unwrap();
        assert_eq!(t.objects().count(), 0);
        assert_eq!(t.settings(), Settings::default());
        assert!(JoinTemplate::new(Some("a; b; c"), 2, None).is_err());
        assert!(JoinTemplate::new(None, 0, None).is_err());
    }

    #[test]
    fn follows_commands_with_the_streams_ids() {
        let mut t = JoinTemplate::new(Some("a cat"), 3, None).unwrap();
        assert_eq!(t.apply(&add("a dog", None)).unwrap(), [1]);
        let e = t.apply(&add("a cup; a hat", None)).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        t.apply(&Command::Remove { object: 1 }).unwrap();
        // A removed id is not handed out again while others are free.
        assert_eq!(t.apply(&add("a hat", None)).unwrap(), [2]);
        t.apply(&Command::Replace {
            object: 0,
            prompt: "a lion".into(),
        })
        .unwrap();
        assert!(t.apply(&Command::Remove { object: 7 }).is_err());
        assert!(t.apply(&add("", None)).is_err());
        assert!(t.apply(&add("x", Some(2))).is_err(), "id 2 is taken");
        t.apply(&Command::Mode {
            mode: SelectMode::Multi,
            threshold: Some(0.5),
        })
        .unwrap();
        t.apply(&Command::Pause).unwrap();
        t.apply(&Command::Status).unwrap();
        assert_eq!(
            t.objects().collect::<Vec<_>>(),
            [(0, "a lion"), (2, "a hat")]
        );
        let s = t.settings();
        assert_eq!(
            (s.mode, s.threshold, s.paused),
            (SelectMode::Multi, 0.5, true)
        );
        assert_eq!(s.prompt.as_deref(), Some("a lion; a hat"));
        assert_eq!(t.next_id(), 3);
        // clear keeps the id sequence going, as a stream's does; prompt restarts it.
        t.apply(&Command::Clear).unwrap();
        assert_eq!((t.objects().count(), t.next_id()), (0, 3));
        assert_eq!(t.apply(&add("a cat", None)).unwrap(), [3]);
        t.set_prompt(Some("x; y")).unwrap();
        assert_eq!(t.next_id(), 2);
        t.apply(&Command::Resume).unwrap();
        assert!(!t.settings().paused);
    }

    /// A stream's set that refuses prompts longer than 5 bytes (as a text encoder can).
    struct Strict(Prompts);

    impl ObjectSet for Strict {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn max_objects(&self) -> usize {
            self.0.max_objects()
        }
        fn ids(&self) -> Vec<ObjectId> {
            self.0.ids()
        }
        fn id_space(&self) -> &IdSpace {
            self.0.id_space()
        }
        fn check_prompt(&mut self, p: &str) -> Result<()> {
            if p.len() > 5 {
                return Err(Error::Text(format!("{p:?} is too long")));
            }
            Ok(())
        }
        fn set_prompts(&mut self, prompts: &[&str]) -> Result<()> {
            for p in prompts {
                self.check_prompt(p)?;
            }
            self.0.set_prompts(prompts)
        }
        fn clear(&mut self) -> Result<()> {
            self.0.clear()
        }
        fn add(&mut self, id: Option<ObjectId>, prompt: &str) -> Result<ObjectId> {
            self.check_prompt(prompt)?;
            self.0.add(id, prompt)
        }
        fn remove(&mut self, id: ObjectId) -> Result<()> {
            self.0.remove(id)
        }
        fn replace(&mut self, id: ObjectId, prompt: &str) -> Result<()> {
            self.check_prompt(prompt)?;
            self.0.replace(id, prompt)
        }
        fn resume_ids(&mut self, from: &IdSpace) {
            self.0.resume_ids(from)
        }
    }

    #[test]
    fn restores_objects_ids_and_the_next_id() {
        let mut t = JoinTemplate::new(Some("cat; dog; cow"), 4, None).unwrap();
        t.apply(&Command::Remove { object: 1 }).unwrap();
        t.apply(&add("giraffe", Some(9))).unwrap();
        t.apply(&Command::Remove { object: 9 }).unwrap();
        let mut joined = Strict(Prompts(ObjectTable::new(4).unwrap()));
        joined.add(None, "old").unwrap();
        assert!(t.restore(&mut joined).is_empty());
        assert_eq!(joined.ids(), [0, 2]);
        // The next id the open streams would assign (10), not one past the restored ids (3).
        let next = apply_command(&mut joined, &add("hen", None)).unwrap();
        assert_eq!(next, t.apply(&add("hen", None)).unwrap());
        assert_eq!(next, [10]);

        // A prompt the joining stream refuses is left out, with the reason; the rest join.
        t.apply(&add("a very long prompt", Some(4))).unwrap();
        let mut joined = Strict(Prompts(ObjectTable::new(4).unwrap()));
        let refused = t.restore(&mut joined);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 4);
        assert!(
            refused[0].1.to_string().contains("too long"),
            "{}",
            refused[0].1
        );
        assert_eq!(joined.ids(), [0, 2, 10]);
    }

    /// Over random command sequences (prompts, clears, adds with and without ids, removes,
    /// replaces, some refused): a stream restored from the template after them holds what a stream
    /// that took them all holds, and both give the same id to the next add.
    #[test]
    fn a_restored_stream_matches_one_that_took_every_command() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let words = ["cat", "dog", "cow", "hen", "ox", "the long one"];
        for _ in 0..300 {
            let mut t = JoinTemplate::new(Some("cat; dog"), 4, None).unwrap();
            let mut open = Strict(Prompts(ObjectTable::new(4).unwrap()));
            apply_command(
                &mut open,
                &Command::Prompt {
                    prompt: "cat; dog".into(),
                },
            )
            .unwrap();
            for _ in 0..next(12) {
                let w = words[next(words.len() as u64) as usize].to_string();
                let id = next(8) as ObjectId;
                let c = match next(6) {
                    0 => Command::Prompt {
                        prompt: format!("{w}; {}", words[next(5) as usize]),
                    },
                    1 => Command::Clear,
                    2 => add(&w, None),
                    3 => add(&w, Some(id)),
                    4 => Command::Remove { object: id },
                    _ => Command::Replace {
                        object: id,
                        prompt: w,
                    },
                };
                // As the runtime does: the template follows what every open stream took.
                if apply_command(&mut open, &c).is_ok() {
                    t.apply(&c).unwrap();
                }
            }
            let mut joined = Strict(Prompts(ObjectTable::new(4).unwrap()));
            let refused: Vec<ObjectId> = t.restore(&mut joined).iter().map(|r| r.0).collect();
            assert!(refused.is_empty(), "{refused:?}");
            let held = |s: &Strict| -> Vec<(ObjectId, String)> {
                s.0 .0.iter().map(|o| (o.id, o.prompt.clone())).collect()
            };
            assert_eq!(held(&joined), held(&open));
            if open.len() < 4 {
                let a = apply_command(&mut open, &add("ox", None)).unwrap();
                let b = apply_command(&mut joined, &add("ox", None)).unwrap();
                assert_eq!(a, b);
            }
        }
    }
}
